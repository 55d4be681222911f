/* Tries the system calls Docker's default seccomp profile refuses, and a few it allows,
   printing one line each: "<name> ok" or "<name> <errno name>". Read-only or reversible:
   every call either fails or changes nothing outside this short-lived process. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Each call is made through syscall(2) where libc's wrapper would not set errno. */
#define TRY(name, call) do { errno = 0; report(name, (long)(call)); } while (0)

static void report(const char *name, long result) {
    if (result >= 0) printf("%s ok\n", name);
    else printf("%s %s\n", name, errno == EPERM ? "EPERM" : errno == ENOSYS ? "ENOSYS"
                                : strerror(errno));
}

int main(void) {
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.size = sizeof attr;
    attr.config = PERF_COUNT_SW_TASK_CLOCK;
    attr.disabled = 1;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    TRY("unshare-user", unshare(CLONE_NEWUSER));
    TRY("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
    TRY("perf_event_open", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
    TRY("bpf", syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, NULL, 0));
    TRY("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    TRY("socket-vsock", socket(40 /* AF_VSOCK */, SOCK_STREAM, 0));
    TRY("personality-read-implies-exec", personality(READ_IMPLIES_EXEC));
    TRY("clone3", syscall(SYS_clone3, NULL, 0));
    TRY("personality-query", personality(0xffffffff));
    TRY("getpid", syscall(SYS_getpid));
    TRY("socket-inet", socket(AF_INET, SOCK_STREAM, 0));
    return 0;
}
