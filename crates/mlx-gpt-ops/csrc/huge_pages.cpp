// Arrays on 2 MiB pages, for decoding: its weights and its KV cache.
//
// Decoding reads every weight once per token (GPT-2 124M in float32: about 500 MB), as
// fast as memory delivers it. On 4 KiB pages that is 120 000 pages a token, each a
// translation miss, and the hardware prefetchers stop at every page's end; on 2 MiB pages
// it is 250. Two threads summing 512 MiB, alternating between a buffer on 4 KiB pages and
// one on 2 MiB pages, read 39.6-62.5 against 50.1-71.4 GB/s, every one of eight pairs
// faster on 2 MiB pages (AMD EPYC Zen 5; docs/performance-history.md).
// Linux backs anonymous memory with 2 MiB pages ("transparent huge pages") where the
// program asks for them with madvise, which is the default on many distributions
// (/sys/kernel/mm/transparent_hugepage/enabled: "madvise"); MLX's CPU allocator takes its
// buffers from malloc, which does not ask.
//
// mlx_gpt_huge_pages_gather copies arrays into one anonymous mapping that asks for 2 MiB
// pages before anything touches it, and hands back MLX arrays over that memory, with the
// same shapes, dtypes and layouts (row-major, or column-major as src/layout.rs stores
// them). The mapping goes when the last of them does.
//
// MLX's CPU allocator keeps each buffer's size in the eight bytes before its data
// (mlx/backend/no_gpu/allocator.cpp: Buffer::raw_ptr is the pointer after that header):
// the copies' buffers are laid out the same way, and the gather declines (status 2)
// where a test allocation shows another convention (another MLX, a GPU allocator).

#include <mlx/allocator.h>
#include <mlx/array.h>
#include <mlx/ops.h>
#include <mlx/transforms.h>

#include "mlx/c/private/array.h"

#include "entry.h"
#include "primitive.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace mx = mlx::core;

namespace {

constexpr size_t kHugePage = size_t{2} << 20;

// Whether the kernel gives 2 MiB pages to memory that asks for them: its setting reads
// "always [madvise] never" with the mode in brackets.
bool huge_pages_available() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode;
  return std::getline(f, mode) && (mode.find("[madvise]") != std::string::npos ||
                                   mode.find("[always]") != std::string::npos);
}

// Whether this MLX's CPU allocator keeps a size header before each buffer's data. (A
// buffer may come from MLX's cache of freed ones, a little larger than asked for, its
// header still holding its old size in some versions.)
bool allocator_keeps_size_header() {
  mx::allocator::Buffer b = mx::allocator::malloc(64);
  if (b.ptr() == nullptr) {
    return false;
  }
  const size_t size = mx::allocator::allocator().size(b);
  const bool ok = static_cast<char*>(b.raw_ptr()) == static_cast<char*>(b.ptr()) + sizeof(size_t) &&
                  size >= 64 && size <= (size_t{1} << 20);
  mx::allocator::free(b);
  return ok;
}

// One mapping; registered while it lives, so mlx_gpt_on_huge_pages can tell its arrays.
class Region {
 public:
  Region(void* map, size_t size) : map_(map), size_(size) {
    std::lock_guard<std::mutex> lock(mutex());
    live().push_back(this);
  }
  ~Region() {
    {
      std::lock_guard<std::mutex> lock(mutex());
      auto& l = live();
      l.erase(std::find(l.begin(), l.end(), this));
    }
    munmap(map_, size_);
  }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  char* base() const {
    return static_cast<char*>(map_);
  }

  static bool holds(const void* p) {
    std::lock_guard<std::mutex> lock(mutex());
    for (const Region* r : live()) {
      if (p >= r->map_ && p < r->base() + r->size_) {
        return true;
      }
    }
    return false;
  }

 private:
  static std::mutex& mutex() {
    static std::mutex* m = new std::mutex;  // never destroyed: arrays may outlive statics
    return *m;
  }
  static std::vector<const Region*>& live() {
    static auto* l = new std::vector<const Region*>;
    return *l;
  }
  void* map_;
  size_t size_;
};

// Whether `a`'s numbers lie as one dense stretch from its data pointer: row-major, or
// column-major (src/layout.rs).
bool one_stretch(const mx::array& a) {
  return a.is_available() && a.data_size() == a.size() &&
         (a.flags().row_contiguous || (a.ndim() == 2 && mlx_gpt::column_major(a)));
}

// Both, checked once.
bool usable() {
  static const bool ok = huge_pages_available() && allocator_keeps_size_header();
  return ok;
}

}  // namespace

extern "C" {

// Whether mlx_gpt_huge_pages_gather places arrays on 2 MiB pages here.
bool mlx_gpt_huge_pages_usable() {
  return usable();
}

// Whether a's data lies in memory that mlx_gpt_huge_pages_gather placed (still mapped).
bool mlx_gpt_on_huge_pages(const mlx_array a) {
  const mx::array& arr = mlx_array_get_(a);
  return arr.is_available() && Region::holds(arr.data<void>());
}

// outs[i] = a copy of arrays[i] (evaluated, dense: row-major, or 2-D column-major) on
// memory that asks the kernel for 2 MiB pages: the same shape, dtype, layout and values.
// Returns 0; 2 (outs untouched) when the kernel gives no such pages or this MLX's
// allocator keeps buffers another way; or 1 with the reason in mlx_gpt_last_error().
int mlx_gpt_huge_pages_gather(mlx_array* outs, const mlx_array* arrays, size_t n) {
  return mlx_gpt::guarded([&]() {
    if (!usable()) {
      return 2;
    }
    // Each buffer: the size header, then the data on a cache-line boundary.
    std::vector<size_t> offsets(n);
    size_t end = 0;
    for (size_t i = 0; i < n; ++i) {
      const mx::array& a = mlx_array_get_(arrays[i]);
      if (!one_stretch(a)) {
        throw std::invalid_argument("[huge pages] array " + std::to_string(i) + " is not evaluated and dense");
      }
      offsets[i] = (end + sizeof(size_t) + 63) / 64 * 64 - sizeof(size_t);
      end = offsets[i] + sizeof(size_t) + a.nbytes();
    }
    // Mapped with room to start on a 2 MiB boundary; madvise before the first touch, so
    // the copies below fault in 2 MiB pages.
    const size_t size = (end + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
    void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
      throw std::runtime_error("[huge pages] could not map " + std::to_string(size) + " bytes");
    }
    auto region = std::make_shared<Region>(map, size);
    char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(map) + kHugePage - 1) / kHugePage * kHugePage);
    if (madvise(base, size - kHugePage, MADV_HUGEPAGE) != 0) {
      return 2;  // the region goes with `region`
    }
    std::vector<mx::array> copies;
    for (size_t i = 0; i < n; ++i) {
      const mx::array& a = mlx_array_get_(arrays[i]);
      char* header = base + offsets[i];
      const size_t bytes = a.nbytes();
      std::memcpy(header, &bytes, sizeof(bytes));
      std::memcpy(header + sizeof(size_t), a.data<char>(), bytes);
      // The deleter holds the region: it goes with the last array over it.
      auto release = [region](mx::allocator::Buffer) {};
      const bool columns = !a.flags().row_contiguous;
      mx::Shape shape = a.shape();
      if (columns) {
        std::swap(shape[0], shape[1]);  // the (out, in) rows as they lie
      }
      mx::array copy(mx::allocator::Buffer(header), shape, a.dtype(), release);
      copies.push_back(columns ? mx::transpose(copy) : copy);
    }
    mx::eval(copies);
    for (size_t i = 0; i < n; ++i) {
      mlx_array_set_(outs[i], copies[i]);
    }
    return 0;
  });
}

}  // extern "C"
