// holder.c - the sandbox holder process itself (nsholder.go starts it): the
// shim binary executed as "<binary> sandbox-holder [--hostname H]
// [--sysctl k=v]... [--pid1]" runs this as a C constructor, before the Go
// runtime starts, and never returns into Go. A pod's holder then costs what
// pause costs (one thread, a few hundred KiB) instead of a Go runtime's
// heap, threads and GC (7 MiB PSS measured with the Go version).
//
// It runs in the pod's new namespaces (the shim forked it into them): sets
// the pod's hostname and sysctls, reports "ok" or what went wrong on fd 3
// (the shim reads until EOF), then waits for SIGTERM or SIGINT, reaping
// orphans as the init of a shared PID namespace.
//
// A user-namespaced pod (--userns UIDMAP GIDMAP): CRI made the pod's network
// namespace inside a user namespace of its own. The shim forks the holder
// into that network namespace only; the holder joins the user namespace that
// owns it (NS_GET_USERNS; setns to a user namespace needs a single-threaded
// caller, hence here and not in Go), checks its mappings are the pod's,
// becomes the pod's root, and only then makes the UTS and IPC namespaces, so
// that they belong to the pod's user namespace as pause's do and the
// containers, which join /proc/<holder>/ns/user, can join them too.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <grp.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOLDER_MODE "sandbox-holder"
#define READY_FD 3
// With --userns and a new PID namespace: the shim closes its end of this
// pipe once the holder is in the pod's cgroup (its child inherits that).
#define GO_FD 4

static void write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

// fail reports the error to the shim and exits.
static void __attribute__((noreturn, format(printf, 1, 2))) fail(const char *fmt, ...)
{
	char msg[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(msg) - 1)
		n = (int)sizeof(msg) - 1;
	if (n > 0)
		write_all(READY_FD, msg, (size_t)n);
	close(READY_FD);
	_exit(1);
}

// read_cmdline reads /proc/self/cmdline (NUL-separated arguments): glibc
// passes argv to constructors, other C libraries do not.
static char *read_cmdline(size_t *len)
{
	int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1);
	while (buf) {
		if (n == cap) {
			char *grown = realloc(buf, cap * 2 + 1);
			if (!grown) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = grown;
			cap *= 2;
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (buf) {
		buf[n] = '\0';
		*len = n;
	}
	return buf;
}

static void set_sysctl(const char *kv)
{
	const char *eq = strchr(kv, '=');
	if (!eq)
		fail("sysctl %s: no value", kv);
	char path[4096];
	int n = snprintf(path, sizeof(path), "/proc/sys/%.*s", (int)(eq - kv), kv);
	if (n < 0 || n >= (int)sizeof(path))
		fail("sysctl %.*s: name too long", (int)(eq - kv), kv);
	// The key is validated by the shim (namespaced keys, no "/" or "..");
	// its dots are the path's separators.
	for (char *p = path + strlen("/proc/sys/"); *p; p++)
		if (*p == '.')
			*p = '/';
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fail("sysctl %.*s=%s: %s", (int)(eq - kv), kv, eq + 1, strerror(errno));
	const char *v = eq + 1;
	size_t len = strlen(v);
	ssize_t w;
	do
		w = write(fd, v, len);
	while (w < 0 && errno == EINTR);
	if (w < 0 || (size_t)w != len)
		fail("sysctl %.*s=%s: %s", (int)(eq - kv), kv, v, w < 0 ? strerror(errno) : "short write");
	close(fd);
}

// read_map reads /proc/self/<file> (uid_map, gid_map) as one line with its
// runs of blanks squeezed: "0 100000 65536".
static void read_map(const char *file, char *out, size_t size)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/self/%s", file);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("user namespace: open %s: %s", path, strerror(errno));
	ssize_t n;
	do
		n = read(fd, buf, sizeof(buf) - 1);
	while (n < 0 && errno == EINTR);
	close(fd);
	if (n < 0)
		fail("user namespace: read %s: %s", path, strerror(errno));
	buf[n] = '\0';
	size_t o = 0;
	int blank = 1;
	for (char *p = buf; *p && o + 1 < size; p++) {
		int b = (*p == ' ' || *p == '\t' || *p == '\n');
		if (b && !blank)
			out[o++] = ' ';
		else if (!b)
			out[o++] = *p;
		blank = b;
	}
	if (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
}

// join_userns moves the holder into the user namespace that owns its network
// namespace, checks that namespace maps what CRI asked for (the containers'
// specs carry the same mappings; runc checks them too), becomes its root and
// unshares the pod's UTS and IPC namespaces (flags) under it.
static void join_userns(const char *uidmap, const char *gidmap, int flags)
{
	// The host's root's supplementary groups go first, while dropping them
	// is the host's root's to do: a user namespace may deny setgroups.
	if (setgroups(0, NULL) < 0)
		fail("user namespace: drop supplementary groups: %s", strerror(errno));
	int net = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (net < 0)
		fail("user namespace: open /proc/self/ns/net: %s", strerror(errno));
	int user = ioctl(net, NS_GET_USERNS);
	if (user < 0)
		fail("user namespace: the owner of the pod's network namespace (NS_GET_USERNS): %s", strerror(errno));
	close(net);
	if (setns(user, CLONE_NEWUSER) < 0)
		fail("user namespace: join the owner of the pod's network namespace: %s (was the network namespace made "
		     "inside the pod's user namespace?)", strerror(errno));
	close(user);
	char got[512];
	read_map("uid_map", got, sizeof(got));
	if (strcmp(got, uidmap) != 0)
		fail("user namespace: the pod's network namespace belongs to a user namespace whose uid_map is \"%s\", "
		     "the pod's is \"%s\"", got, uidmap);
	read_map("gid_map", got, sizeof(got));
	if (strcmp(got, gidmap) != 0)
		fail("user namespace: the pod's network namespace belongs to a user namespace whose gid_map is \"%s\", "
		     "the pod's is \"%s\"", got, gidmap);
	// The pod's root, as pause runs: not the host's root with the pod's
	// capabilities.
	if (setresgid(0, 0, 0) < 0)
		fail("user namespace: become the pod's root group: %s", strerror(errno));
	if (setresuid(0, 0, 0) < 0)
		fail("user namespace: become the pod's root: %s", strerror(errno));
	if (flags && unshare(flags) < 0)
		fail("user namespace: new UTS/IPC namespaces: %s", strerror(errno));
}

// clone_init: the PID namespace unshared under the pod's user namespace is
// for the holder's children only; its init, the holder the pod's containers
// join, is a child made here as the shim's own (CLONE_PARENT: the shim's
// reaper collects its exit, its pid cannot be reused under the shim). This
// process exits; the child reports "ok <pid> <start time>" (its own, from
// the host's /proc/self/stat) and holds. The clone waits for the shim to
// have put this process in the pod's cgroup, which the child inherits.
static void clone_init(void)
{
	char c;
	ssize_t r;
	do
		r = read(GO_FD, &c, 1);
	while (r < 0 && errno == EINTR);
	close(GO_FD);
	// Every argument after the flags is 0: the same call on x86_64 and
	// arm64, whose raw clone orders the pointer arguments differently.
	pid_t pid = (pid_t)syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
	if (pid < 0)
		fail("user namespace: start the PID namespace's init: %s", strerror(errno));
	if (pid > 0)
		_exit(0);
	// /proc is the host's: self is the host pid, field 22 the start time.
	char stat[1024], msg[64];
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, stat, sizeof(stat) - 1);
	int saved = errno;
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		fail("user namespace: read /proc/self/stat: %s", n < 0 ? strerror(saved) : "empty");
	stat[n] = '\0';
	int self = 0;
	unsigned long long start = 0;
	char *p = strrchr(stat, ')');
	if (sscanf(stat, "%d", &self) != 1 || !p ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", &start) != 1)
		fail("user namespace: malformed /proc/self/stat");
	n = snprintf(msg, sizeof(msg), "ok %d %llu", self, start);
	write_all(READY_FD, msg, (size_t)n);
}

static void __attribute__((noreturn)) hold(char *args, char *end)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD);
	// Blocked before "ok": a stop sent right after the start is never
	// lost, and the init of a PID namespace gets only signals it waits for.
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		fail("block signals: %s", strerror(errno));
	// No ptrace of the holder from the pod (a container with CAP_SYS_PTRACE
	// in a shared PID namespace): it lives in the host's mount namespace.
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		fail("prctl(PR_SET_DUMPABLE): %s", strerror(errno));
	// --userns comes first (the shim puts it there): the namespaces and the
	// settings below must be the pod's user namespace's.
	int userns_pid = 0;
	if (args < end && strcmp(args, "--userns") == 0) {
		char *uidmap = args + strlen(args) + 1;
		char *gidmap = uidmap < end ? uidmap + strlen(uidmap) + 1 : end;
		char *unsh = gidmap < end ? gidmap + strlen(gidmap) + 1 : end;
		if (unsh >= end)
			fail("sandbox holder: --userns needs UIDMAP GIDMAP FLAGS");
		int flags = (int)strtol(unsh, NULL, 0);
		join_userns(uidmap, gidmap, flags);
		// The credentials changed: the kernel reset dumpability to
		// fs.suid_dumpable; no ptrace from the pod whatever that says.
		if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
			fail("prctl(PR_SET_DUMPABLE): %s", strerror(errno));
		userns_pid = (flags & CLONE_NEWPID) != 0;
		args = unsh + strlen(unsh) + 1;
	}
	for (char *a = args; a < end; a += strlen(a) + 1) {
		char *next = a + strlen(a) + 1;
		if (strcmp(a, "--hostname") == 0 && next < end) {
			if (sethostname(next, strlen(next)) < 0)
				fail("set hostname \"%s\": %s", next, strerror(errno));
			a = next;
		} else if (strcmp(a, "--sysctl") == 0 && next < end) {
			set_sysctl(next);
			a = next;
		} else if (strcmp(a, "--pid1") == 0) {
			// The PID namespace was made by the shim's fork; being its
			// init needs nothing more than the reaping below.
		} else {
			fail("sandbox holder: unknown argument \"%s\"", a);
		}
	}
	if (userns_pid)
		clone_init(); // returns in the child, which has reported
	else
		write_all(READY_FD, "ok", 2);
	close(READY_FD);
	for (;;) {
		int sig = sigwaitinfo(&set, NULL);
		if (sig < 0) {
			if (errno == EINTR)
				continue;
			_exit(1);
		}
		if (sig != SIGCHLD)
			_exit(0);
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	}
}

__attribute__((constructor)) static void sandbox_holder(void)
{
	size_t len = 0;
	char *cmd = read_cmdline(&len);
	if (!cmd)
		return;
	char *end = cmd + len;
	char *mode = cmd + strlen(cmd) + 1;
	if (mode >= end || strcmp(mode, HOLDER_MODE) != 0) {
		free(cmd);
		return;
	}
	hold(mode + strlen(mode) + 1, end);
}
