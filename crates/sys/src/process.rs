//! Process-wide settings that must be made before the sandbox closes.

/// Caps glibc's malloc arenas (see `ioctl::set_malloc_arena_max`). Returns whether glibc
/// accepted the setting.
pub fn limit_malloc_arenas(arenas: i32) -> bool {
    crate::ioctl::set_malloc_arena_max(arenas)
}
