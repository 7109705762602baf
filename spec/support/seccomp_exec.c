/*
 * seccomp_exec.c: runs a program with io_uring_setup(2) (or connect(2)) failing.
 *
 *   seccomp_exec EPERM|ENOSYS|connect=EAGAIN program [args...]
 *
 * Installs a seccomp BPF filter that makes io_uring_setup return the given
 * errno (what Docker's default profile, or a kernel built without io_uring,
 * looks like from inside), or with connect=EAGAIN makes every connect(2)
 * fail with EAGAIN (a connect that started nothing), and lets every other
 * system call through, then execs program. Built by spec/faults_spec.rb into tmp/; not part of the gem.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif

#if defined(__x86_64__)
#define SE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SE_ARCH AUDIT_ARCH_AARCH64
#else
#error "seccomp_exec: add this architecture's AUDIT_ARCH_*"
#endif

int
main(int argc, char **argv)
{
    unsigned err, nr = __NR_io_uring_setup;

    if (argc < 3) {
        fprintf(stderr, "usage: %s EPERM|ENOSYS|connect=EAGAIN program [args...]\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "EPERM") == 0) err = EPERM;
    else if (strcmp(argv[1], "ENOSYS") == 0) err = ENOSYS;
    else if (strcmp(argv[1], "connect=EAGAIN") == 0) { err = EAGAIN; nr = __NR_connect; }
    else {
        fprintf(stderr, "%s: errno must be EPERM or ENOSYS, not %s\n", argv[0], argv[1]);
        return 2;
    }

    struct sock_filter filter[] = {
        /* Another architecture's syscall numbers mean something else: allow. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SE_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { (unsigned short)(sizeof(filter) / sizeof(filter[0])), filter };

    /* Unprivileged processes may only install a filter after promising not
     * to gain privileges (and root loses nothing by promising). */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("prctl(PR_SET_NO_NEW_PRIVS)");
        return 3;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("prctl(PR_SET_SECCOMP)");
        return 3;
    }
    execvp(argv[2], argv + 2);
    perror(argv[2]);
    return 127;
}
