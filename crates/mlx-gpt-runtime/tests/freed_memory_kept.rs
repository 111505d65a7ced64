//! `keep_freed_memory` keeps the top of glibc's main heap after a large free: 1.2 GB
//! freed at once (more than the 1 GiB trim threshold used before, which then handed all
//! of it back) leaves the heap's end where it was. On the main thread, without a test
//! harness, so that the blocks come from the main heap (other threads have arenas of
//! their own).

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        assert!(mlx_gpt_runtime::malloc::keep_freed_memory(), "glibc takes both thresholds");
        // Twelve blocks of 100 MiB: under the 256 MiB mmap threshold, so on the heap.
        let blocks: Vec<*mut u8> = (0..12)
            .map(|_| {
                // SAFETY: a plain allocation, checked, touched page by page, freed below.
                let p = unsafe { libc::malloc(100 << 20) } as *mut u8;
                assert!(!p.is_null());
                for page in (0..100 << 20).step_by(4096) {
                    unsafe { p.add(page).write_volatile(1) };
                }
                p
            })
            .collect();
        // SAFETY: sbrk(0) only reads the heap's end.
        let end_before = unsafe { libc::sbrk(0) } as usize;
        for p in blocks.into_iter().rev() {
            // SAFETY: each block was allocated above and is freed once.
            unsafe { libc::free(p as *mut libc::c_void) };
        }
        let end_after = unsafe { libc::sbrk(0) } as usize;
        assert_eq!(
            end_after,
            end_before,
            "the heap shrank by {} MiB after the blocks were freed",
            end_before.saturating_sub(end_after) >> 20
        );
        // Handing memory back on purpose still works.
        mlx_gpt_runtime::malloc::release_free_memory();
        let end_released = unsafe { libc::sbrk(0) } as usize;
        assert!(end_released < end_before, "malloc_trim should return the freed top of the heap");
        println!("freed_memory_kept: ok");
    }
}
