#define _GNU_SOURCE
#include "cvaultsystem.h"

#include <errno.h>
#include <spawn.h>
#include <sys/socket.h>

#ifdef __linux__
#include <malloc.h>
#include <sys/prctl.h>

int shredvault_set_dumpable(int on) { return prctl(PR_SET_DUMPABLE, on ? 1 : 0, 0, 0, 0); }

int shredvault_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }

int shredvault_malloc_trim(void) { return malloc_trim(0); }

void shredvault_malloc_stats(void) { malloc_stats(); }

_Static_assert(sizeof(shredvault_ucred) == sizeof(struct ucred), "shredvault_ucred is struct ucred");
_Static_assert(__builtin_offsetof(shredvault_ucred, pid) == __builtin_offsetof(struct ucred, pid), "pid");
_Static_assert(__builtin_offsetof(shredvault_ucred, uid) == __builtin_offsetof(struct ucred, uid), "uid");
_Static_assert(__builtin_offsetof(shredvault_ucred, gid) == __builtin_offsetof(struct ucred, gid), "gid");

const int shredvault_so_peercred = SO_PEERCRED;

int shredvault_spawn_close_from(posix_spawn_file_actions_t *actions, int from) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    int r = posix_spawn_file_actions_addclosefrom_np(actions, from);
    if (r != 0) { errno = r; return -1; }
    return 0;
#else
    (void)actions; (void)from;
    errno = ENOSYS;
    return -1;
#endif
}

#else  /* not Linux: none of these exist; callers treat -1 as "not available" */

int shredvault_set_dumpable(int on) { (void)on; errno = ENOSYS; return -1; }
int shredvault_get_dumpable(void) { errno = ENOSYS; return -1; }
int shredvault_malloc_trim(void) { return 0; }
void shredvault_malloc_stats(void) {}
const int shredvault_so_peercred = -1;
int shredvault_spawn_close_from(posix_spawn_file_actions_t *actions, int from) {
    (void)actions; (void)from; errno = ENOSYS; return -1;
}

#endif
