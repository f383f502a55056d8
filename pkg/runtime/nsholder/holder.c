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
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOLDER_MODE "sandbox-holder"
#define READY_FD 3

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
