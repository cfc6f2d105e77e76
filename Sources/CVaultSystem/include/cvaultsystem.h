#ifndef SHREDVAULT_CVAULTSYSTEM_H
#define SHREDVAULT_CVAULTSYSTEM_H

/* The few system calls Swift's Glibc module does not show (variadic prctl, malloc.h, struct ucred
 * and posix_spawn's closefrom action live behind _GNU_SOURCE): one small C layer, so no Swift code
 * looks symbols up at run time or reinterprets a prototype. Every function returns what the call
 * returned (-1 and errno on failure) unless it says otherwise. */

#include <stdint.h>
#include <spawn.h>

/* prctl(PR_SET_DUMPABLE, on): whether the process may dump core (and be ptraced by its uid). */
int shredvault_set_dumpable(int on);
/* prctl(PR_GET_DUMPABLE): 1 dumpable, 0 not, -1 on failure. */
int shredvault_get_dumpable(void);

/* malloc_trim(0): returns freed heap memory to the system; 1 if some was released. */
int shredvault_malloc_trim(void);
/* malloc_stats(): glibc's per-arena totals, to stderr. */
void shredvault_malloc_stats(void);

/* What getsockopt(SOL_SOCKET, SO_PEERCRED) fills on a connected Unix socket: the peer process as
 * the kernel saw it when it connected. The same layout as Linux's struct ucred (checked at compile
 * time in cvaultsystem.c), which glibc shows only under _GNU_SOURCE. */
typedef struct {
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
} shredvault_ucred;

/* SO_PEERCRED's value (-1 off Linux). */
extern const int shredvault_so_peercred;

/* posix_spawn_file_actions_addclosefrom_np(actions, from): the child closes every descriptor
 * from `from` up before it runs (glibc 2.34 and later; -1 with ENOSYS before). */
int shredvault_spawn_close_from(posix_spawn_file_actions_t *actions, int from);

#endif
