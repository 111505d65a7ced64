#!/usr/bin/env bash
# blas_routes.sh - measure the candidate routes to a fast CPU sgemm on this machine.
#
# What it measures
#   MLX's CPU matmuls call `cblas_sgemm`. Debian's OpenBLAS 0.3.21 does not know
#   newer Intel server CPUs (e.g. family 6 model 207) and falls back to its generic
#   "Prescott" kernels. This script compiles a small C probe (gcc, in a temp dir)
#   that dlopen()s a BLAS shared library, looks up `<prefix>cblas_sgemm`, checks one
#   odd-sized product (67x45x93) against a naive double-precision loop, and times
#   row-major NN float32 C = A*B (alpha=1, beta=0) at:
#     2048^3, 1024^3,
#     baby-GPT training-step shapes: 768x384x128 768x128x128 768x512x128
#                                    768x128x512 768x65x128
#     default shakespeare_char step: 8192x1152x384 8192x384x384 8192x1536x384
#                                    8192x384x1536
#   Each shape: one warm-up call, then the median of ~0.2 s worth of calls
#   (at least 3), reported as GFLOP/s = 2*M*N*K / median time.
#   Threads: 2 (both cores), plus 1 thread for 2048^3 and 768x384x128.
#
# Routes
#   a. Debian OpenBLAS 0.3.21 as installed (auto-detected core)
#   b. the same with OPENBLAS_CORETYPE=SkylakeX, Cooperlake, Haswell
#   c. OpenBLAS 0.3.34 from PyPI's scipy-openblas32 wheel (symbols prefixed scipy_)
#   d. BLIS from Debian (libblis4-pthread), if it exports cblas_sgemm
#
# How to run
#   bash scripts/blas_routes.sh            # prints everything to stdout (~1-2 min)
#   bash scripts/blas_routes.sh | tee docs/blas-routes-run.txt
#   Needs gcc, python3 -m pip (PyPI) and apt-get (Debian) reachable; run as root for
#   apt-get update. The wheel and the .deb are only unpacked into a temp dir: nothing
#   is installed system-wide, so the libblas.so.3 alternative is left untouched.
#   Environment overrides: DEBIAN_OPENBLAS=/path/to/libopenblas.so,
#   SCIPY_OPENBLAS_VERSION=0.3.34.481.3, BLIS_PKG=libblis4-pthread, KEEP_TMP=1.
#   Run on an otherwise idle machine: the load average is printed to judge noise.
set -u

DEBIAN_OPENBLAS=${DEBIAN_OPENBLAS:-/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so}
SCIPY_OPENBLAS_VERSION=${SCIPY_OPENBLAS_VERSION:-0.3.34.481.3}
BLIS_PKG=${BLIS_PKG:-libblis4-pthread}
THREADS=2

TMP=$(mktemp -d /tmp/blas_routes.XXXXXX)
if [ "${KEEP_TMP:-0}" != 1 ]; then trap 'rm -rf "$TMP"' EXIT; fi
SUMMARY="$TMP/summary.tsv"
: >"$SUMMARY"

echo "=== blas_routes.sh: sgemm routes on this CPU ==="
echo "date -u:    $(date -u)"
lscpu | grep -E '^(Model name|CPU family|Model|Thread\(s\) per core|Core\(s\) per socket|CPU\(s\)):' | sed 's/^/lscpu:      /'
echo "avx512f:    $(grep -q avx512f /proc/cpuinfo && echo yes || echo no)"
echo "loadavg:    $(cat /proc/loadavg)   (before measuring; >0.3 means the numbers are noisy)"
echo "gcc:        $(gcc --version | head -1)"
echo

# --------------------------------------------------------------------- probe
cat >"$TMP/probe.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { RowMajor = 101, NoTrans = 111 };
typedef void (*sgemm_t)(int, int, int, int, int, int, float, const float *, int,
                        const float *, int, float, float *, int);
static sgemm_t sgemm;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
static float *randbuf(size_t n, unsigned *seed) {
  float *p = aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
  for (size_t i = 0; i < n; i++) p[i] = (float)rand_r(seed) / RAND_MAX * 2.0f - 1.0f;
  return p;
}
static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
static void *sym(void *h, const char *prefix, const char *name) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s%s", prefix, name);
  return dlsym(h, buf);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s LIB PREFIX LABEL [MxNxK ...]\n", argv[0]);
    return 2;
  }
  const char *lib = argv[1], *prefix = argv[2], *label = argv[3];
  void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  if (!h) { printf("  dlopen failed: %s\n", dlerror()); return 1; }
  sgemm = (sgemm_t)sym(h, prefix, "cblas_sgemm");
  if (!sgemm) { printf("  %scblas_sgemm: NOT EXPORTED by %s\n", prefix, lib); return 1; }

  /* identification, when the library offers it */
  const char *(*corename)(void) = (const char *(*)(void))sym(h, prefix, "openblas_get_corename");
  const char *(*config)(void) = (const char *(*)(void))sym(h, prefix, "openblas_get_config");
  int (*nthreads)(void) = (int (*)(void))sym(h, prefix, "openblas_get_num_threads");
  int (*bli_arch_query_id)(void) = (int (*)(void))dlsym(h, "bli_arch_query_id");
  const char *(*bli_arch_string)(int) = (const char *(*)(int))dlsym(h, "bli_arch_string");
  const char *(*bli_version)(void) = (const char *(*)(void))dlsym(h, "bli_info_get_version_str");
  int (*bli_nthreads)(void) = (int (*)(void))dlsym(h, "bli_thread_get_num_threads");
  if (corename) printf("  %sopenblas_get_corename(): %s\n", prefix, corename());
  if (config) printf("  %sopenblas_get_config():   %s\n", prefix, config());
  if (nthreads) printf("  %sopenblas_get_num_threads(): %d\n", prefix, nthreads());
  if (bli_version) printf("  bli_info_get_version_str(): %s\n", bli_version());
  if (bli_arch_query_id && bli_arch_string)
    printf("  bli_arch_string(bli_arch_query_id()): %s\n", bli_arch_string(bli_arch_query_id()));
  if (bli_nthreads) printf("  bli_thread_get_num_threads(): %d\n", bli_nthreads());

  /* correctness: one odd-sized product against a double-precision loop */
  {
    int M = 67, N = 45, K = 93;
    unsigned seed = 7;
    float *A = randbuf((size_t)M * K, &seed), *B = randbuf((size_t)K * N, &seed);
    float *C = randbuf((size_t)M * N, &seed); /* garbage: beta=0 must ignore it */
    sgemm(RowMajor, NoTrans, NoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    double maxerr = 0, maxref = 0, maxrel_scaled = 0;
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        double s = 0, sa = 0;
        for (int k = 0; k < K; k++) {
          s += (double)A[i * K + k] * B[k * N + j];
          sa += fabs((double)A[i * K + k] * B[k * N + j]);
        }
        double e = fabs(C[i * N + j] - s);
        if (e > maxerr) maxerr = e;
        if (fabs(s) > maxref) maxref = fabs(s);
        if (e / sa > maxrel_scaled) maxrel_scaled = e / sa;
      }
    printf("  validate 67x45x93: max|C-ref|/max|ref| = %.2e, max_ij |C-ref|/sum_k|a*b| = %.2e  %s\n",
           maxerr / maxref, maxrel_scaled, maxrel_scaled < 1e-5 ? "OK" : "WRONG");
    free(A); free(B); free(C);
  }

  const char *env_t = getenv("OPENBLAS_NUM_THREADS");
  int threads = env_t ? atoi(env_t) : 0;
  printf("  %-15s %3s %10s %11s %5s\n", "MxNxK", "thr", "GFLOP/s", "median ms", "reps");
  for (int a = 4; a < argc; a++) {
    int M, N, K;
    if (sscanf(argv[a], "%dx%dx%d", &M, &N, &K) != 3) { printf("  bad shape %s\n", argv[a]); continue; }
    unsigned seed = 1234;
    float *A = randbuf((size_t)M * K, &seed), *B = randbuf((size_t)K * N, &seed);
    float *C = randbuf((size_t)M * N, &seed);
    double t0 = now();
    sgemm(RowMajor, NoTrans, NoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N); /* warm-up */
    double tw = now() - t0;
    int reps = (int)(0.2 / (tw > 1e-7 ? tw : 1e-7));
    if (reps < 3) reps = 3;
    if (reps > 500) reps = 500;
    double *ts = malloc(sizeof(double) * reps);
    for (int r = 0; r < reps; r++) {
      t0 = now();
      sgemm(RowMajor, NoTrans, NoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
      ts[r] = now() - t0;
    }
    qsort(ts, reps, sizeof(double), cmpd);
    double med = reps % 2 ? ts[reps / 2] : 0.5 * (ts[reps / 2 - 1] + ts[reps / 2]);
    double gf = 2.0 * M * N * K / med / 1e9;
    printf("  %-15s %3d %10.1f %11.3f %5d\n", argv[a], threads, gf, med * 1e3, reps);
    fprintf(stderr, "%s\t%s\t%d\t%.1f\n", label, argv[a], threads, gf); /* summary line */
    free(ts); free(A); free(B); free(C);
  }
  return 0;
}
EOF
if ! gcc -O2 -o "$TMP/probe" "$TMP/probe.c" -ldl -lm; then
  echo "FATAL: probe did not compile"; exit 1
fi

SHAPES="2048x2048x2048 1024x1024x1024 \
768x384x128 768x128x128 768x512x128 768x128x512 768x65x128 \
8192x1152x384 8192x384x384 8192x1536x384 8192x384x1536"
SHAPES_1T="2048x2048x2048 768x384x128"

# run_route LABEL LIB PREFIX [ENV=VAL ...]
run_route() {
  local label=$1 lib=$2 prefix=$3; shift 3
  echo "--- route $label"
  echo "  library: $lib   symbol prefix: '${prefix}'   env: ${*:-(none)}"
  # shellcheck disable=SC2086
  env "$@" OPENBLAS_NUM_THREADS=$THREADS BLIS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS \
    "$TMP/probe" "$lib" "$prefix" "$label" $SHAPES 2>>"$SUMMARY" || echo "  (probe failed, rc=$?)"
  echo "  -- 1 thread:"
  # shellcheck disable=SC2086
  env "$@" OPENBLAS_NUM_THREADS=1 BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
    "$TMP/probe" "$lib" "$prefix" "$label" $SHAPES_1T 2>>"$SUMMARY" \
    | grep -vE 'validate|get_|bli_' || true
  echo
}

# ------------------------------------------------------- a/b. Debian OpenBLAS
if [ -e "$DEBIAN_OPENBLAS" ]; then
  run_route "a.debian-0.3.21" "$DEBIAN_OPENBLAS" ""
  for core in SkylakeX Cooperlake Haswell; do
    run_route "b.debian-$core" "$DEBIAN_OPENBLAS" "" OPENBLAS_CORETYPE=$core
  done
else
  echo "--- routes a/b: $DEBIAN_OPENBLAS not found, skipped"; echo
fi

# ------------------------------------------- c. scipy-openblas32 from PyPI
echo "--- fetching scipy-openblas32==$SCIPY_OPENBLAS_VERSION (pip download, unzip into temp dir)"
if python3 -m pip download --quiet --no-deps --only-binary=:all: \
     "scipy-openblas32==$SCIPY_OPENBLAS_VERSION" -d "$TMP/wheel" >"$TMP/pip.log" 2>&1; then
  whl=$(ls "$TMP"/wheel/*.whl | head -1)
  echo "  wheel: $(basename "$whl")"
  python3 -m zipfile -e "$whl" "$TMP/wheel/x" >/dev/null
  so=$(find "$TMP/wheel/x" -path '*lib/*' -name 'lib*openblas*.so*' | head -1)
  if [ -n "$so" ]; then
    run_route "c.scipy-openblas32" "$so" "scipy_"
  else
    echo "  no OpenBLAS .so found in the wheel's lib/ folder:"; find "$TMP/wheel/x" -name '*.so*'; echo
  fi
else
  echo "  pip download FAILED:"; tail -5 "$TMP/pip.log"; echo
fi

# ------------------------------------------------------------- d. Debian BLIS
echo "--- fetching $BLIS_PKG (apt-get download + dpkg-deb -x into temp dir)"
if ! apt-cache show "$BLIS_PKG" >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || echo "  apt-get update failed"
fi
if (cd "$TMP" && apt-get download -qq "$BLIS_PKG" >"$TMP/apt.log" 2>&1); then
  deb=$(ls "$TMP"/*.deb | head -1)
  echo "  package: $(basename "$deb")"
  dpkg-deb -x "$deb" "$TMP/blis"
  so=$(find "$TMP/blis" -name 'libblis.so.*' -type f | head -1)
  if [ -z "$so" ]; then
    echo "  no libblis.so.* in the package"; echo
  elif nm -D --defined-only "$so" | grep -qw cblas_sgemm; then
    echo "  $(basename "$so") exports cblas_sgemm: yes"
    run_route "d.debian-blis" "$so" ""
  else
    echo "  $(basename "$so") exports cblas_sgemm: NO (BLIS built without its CBLAS layer)"; echo
  fi
else
  echo "  apt-get download FAILED:"; tail -5 "$TMP/apt.log"; echo
fi

# ------------------------------------------------------------------ summary
echo "=== summary: GFLOP/s (rows: shape/threads, columns: route) ==="
awk -F'\t' '
  { key = $2 "/" $3 "t"; if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
    if (!($1 in rs)) { rs[$1] = 1; routes[++nr] = $1 }
    v[key, $1] = $4 }
  END {
    printf "%-20s", "shape/threads"; for (r = 1; r <= nr; r++) printf " %18s", routes[r]; printf "\n"
    for (k = 1; k <= nk; k++) {
      printf "%-20s", keys[k]
      for (r = 1; r <= nr; r++) printf " %18s", ((keys[k], routes[r]) in v) ? v[keys[k], routes[r]] : "-"
      printf "\n"
    }
  }' "$SUMMARY"
echo "loadavg after: $(cat /proc/loadavg)"
