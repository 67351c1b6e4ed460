/* client.c: the QMAILQUEUE program as a compiled thin client of `qqfilter serve`.
 *
 * Its job is exactly what qqfilter/resident/client.py's run and _carry_out do, in the process
 * qmail-smtpd starts for each message: pass fds 0 and 1 (the message and the envelope) and the
 * environment to the resident server over its unix socket (QQF_SOCKET), wait for the answer
 * (at most QQF_SOCKETTIMEOUT seconds once the message is all in), write the answer's log line
 * on fd 2, then exec qmail-queue on the two descriptors the server prepared, or write the
 * custom reply and exit with the code.
 *
 * Why C: starting Python costs ~9 ms of CPU a message, nearly all the client's cost; qmail's
 * own programs are small C binaries for this reason. This one uses libc only.
 *
 * The Python client stays the reference. This file speaks resident/wire.py's packets byte for
 * byte (the request is wire.pack_request's bytes, the answer is read within
 * wire.unpack_answer's bounds) and mirrors client.py's waits; whatever else there is to say
 * or do is Python's. On a failure of its own (server unreachable or busy, no answer, an answer
 * that makes no sense, qmail-queue that cannot be run) it execs the Python wrapper it was
 * built for (QQF_WRAPPER, `qqfilter install-client`) with QQF_CLIENTFAILED=state[:detail]
 * (client.py's FAILED and resume): Python writes the log line, or does the work in-process,
 * exactly as the Python client would have, without trying the socket again. With QQF_SOCKET
 * unset, with arguments (`serve`, `config`...), or at a terminal, it simply execs the wrapper,
 * so QMAILQUEUE and the service can always name this program. Only when even that exec fails
 * does it write a line of its own (the text log format, shortened) and exit 71.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef QQF_WRAPPER
#error "build with -DQQF_WRAPPER='\"/var/qmail/bin/qqfilter\"' (qqfilter install-client does)"
#endif

/* `qqfilter setup` finds the wrapper in this binary by the mark (tools/setup.py, MARK). */
#define MARK "qqfilter-client-wrapper="
static const char marked[] = MARK QQF_WRAPPER;
#define WRAPPER (marked + sizeof MARK - 1)

#define FAILED "QQF_CLIENTFAILED"  /* client.py's FAILED */
#define TEMPFAILED 71               /* exitcodes.TEMPFAILED */
#define DEADLINE 300.0              /* client.py's DEADLINE */
#define MAGIC "QQF1"                /* wire.MAGIC */
#define MAX_ANSWER 65536            /* wire.MAX_ANSWER */
#define MAX_DIGITS 10               /* wire.MAX_DIGITS */
#define UNIX_PATH 108               /* sizeof sun_path: a longer QQF_SOCKET is Python's to word */
static const int candidates[] = {4, 6}; /* replypipe.CANDIDATES */

extern char **environ;
static char answer[MAX_ANSWER + 1];
static char state[MAX_ANSWER + 64];

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Digits with single underscores between them, as Python's float() takes them, copied to
 * *out without the underscores; how many digits, or -1 for a misplaced underscore. */
static int digits(const char **p, char **out, const char *end)
{
    int count = 0;
    while (**p >= '0' && **p <= '9') {
        if (*out >= end)
            return -1;
        *(*out)++ = *(*p)++;
        count++;
        if (**p == '_' && (*p)[1] >= '0' && (*p)[1] <= '9')
            (*p)++;
    }
    return **p == '_' ? -1 : count;
}

/* QQF_SOCKETTIMEOUT as client.py's _seconds reads it: float(text) within (0, 86400], else
 * DEADLINE. inf and nan need no reading: they are out of bounds either way. */
static double seconds(const char *text)
{
    static const char blanks[] = " \t\n\v\f\r"; /* ASCII: the environment is bytes */
    char number[512], *out = number, *end = number + sizeof number - 8;
    const char *p = text;
    if (!p)
        return DEADLINE;
    while (*p && strchr(blanks, *p))
        p++;
    if (*p == '+' || *p == '-')
        *out++ = *p++;
    int whole = digits(&p, &out, end), fraction = 0;
    if (whole >= 0 && *p == '.') {
        *out++ = *p++;
        fraction = digits(&p, &out, end);
    }
    if (whole < 0 || fraction < 0 || whole + fraction == 0)
        return DEADLINE;
    if (*p == 'e' || *p == 'E') {
        *out++ = *p++;
        if (*p == '+' || *p == '-')
            *out++ = *p++;
        if (digits(&p, &out, end) <= 0)
            return DEADLINE;
    }
    while (*p && strchr(blanks, *p))
        p++;
    if (*p)
        return DEADLINE;
    *out = '\0';
    double value = strtod(number, NULL);
    return value > 0 && value <= 86400 ? value : DEADLINE;
}

/* replypipe.usable for one of replypipe.CANDIDATES: a pipe open for writing (the only
 * descriptors a request names, hence the only ones an answer's errfd may be). */
static int usable(long long fd)
{
    struct stat info;
    if ((fd != candidates[0] && fd != candidates[1]) || fstat((int)fd, &info) != 0 ||
        !S_ISFIFO(info.st_mode))
        return 0;
    int mode = fcntl((int)fd, F_GETFL);
    return mode != -1 && ((mode & O_ACCMODE) == O_WRONLY || (mode & O_ACCMODE) == O_RDWR);
}

/* Append text to *at (within end) as logline.escape does (a byte outside printable ASCII as
 * \xNN), double-quoted as format_text quotes. */
static void escaped(char **at, const char *end, const char *text)
{
    char inner[1024], *out = inner;
    int quote = !*text;
    for (; *text && out < inner + sizeof inner - 5; text++) {
        unsigned char c = (unsigned char)*text;
        if (c == '\\' || c == '"')
            out += sprintf(out, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f)
            *out++ = (char)c;
        else
            out += sprintf(out, "\\x%02x", c);
    }
    *out = '\0';
    quote = quote || strpbrk(inner, " \"=\\") != NULL;
    *at += snprintf(*at, (size_t)(end - *at), quote ? "\"%s\"" : "%s", inner);
    if (*at > end)
        *at = (char *)end;
}

/* Exec the Python wrapper with argv's arguments, telling it ``failure`` (QQF_CLIENTFAILED,
 * none when NULL); when even that fails, a line of our own and 71. */
_Noreturn static void wrapper(char **argv, const char *failure)
{
    char **env = environ;
    if (failure) {
        size_t n = 0, kept = 0;
        while (environ[n])
            n++;
        env = malloc((n + 2) * sizeof *env);
        if (env) {
            for (size_t i = 0; i < n; i++)
                if (strncmp(environ[i], FAILED "=", sizeof FAILED) != 0)
                    env[kept++] = environ[i];
            env[kept++] = (char *)failure;
            env[kept] = NULL;
        }
    }
    argv[0] = (char *)WRAPPER;
    int error = env ? (execve(WRAPPER, argv, env), errno) : ENOMEM;
    char line[4096], *at = line, *end = line + sizeof line - 2, reason[2048];
    const char *ip = getenv("TCPREMOTEIP");
    snprintf(reason, sizeof reason, "the compiled client cannot run the Python wrapper %s: %s",
             WRAPPER, strerror(error));
    at += snprintf(at, (size_t)(end - at), "qqfilter: pid=%ld verdict=tempfail code=%d reason=",
                   (long)getpid(), TEMPFAILED);
    escaped(&at, end, reason);
    if (ip && *ip) {
        at += snprintf(at, (size_t)(end - at), " ip=");
        escaped(&at, end, ip);
    }
    *at++ = '\n';
    ssize_t written = write(2, line, (size_t)(at - line));
    (void)written;
    _exit(TEMPFAILED);
}

/* Connect (client.py's _connect): 0 when connected, -1 when the listen backlog stays full
 * past the deadline, else the errno that makes the server unreachable. */
static int connect_to(int sock, const char *path, double deadline)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    size_t length = strlen(path);
    memcpy(address.sun_path, path, length);
    socklen_t size = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + length);
    double give_up = now() + deadline;
    for (;;) {
        if (connect(sock, (struct sockaddr *)&address, size) == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return errno;
        if (now() > give_up)
            return -1;
        nanosleep(&(struct timespec){.tv_nsec = 50000000}, NULL);
    }
}

/* wire.pack_request: magic, pid, the usable reply pipes, then NAME=value for each variable
 * (the first of a name, in environ's order, as os.environ holds them); NULL without memory
 * (*length is then what it would have taken). */
static char *pack_request(size_t *length)
{
    char head[64];
    int at = snprintf(head, sizeof head, MAGIC "%c%ld%c", 0, (long)getpid(), 0);
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates; i++)
        if (usable(candidates[i]))
            at += snprintf(head + at, sizeof head - (size_t)at, "%s%d",
                           head[at - 1] ? "," : "", candidates[i]);
    size_t total = (size_t)at;
    for (char **e = environ; *e; e++)
        total += strlen(*e) + 1;
    char *request = malloc(total);
    *length = total;
    if (!request)
        return NULL;
    char *out = request + at;
    memcpy(request, head, (size_t)at);
    for (char **e = environ; *e; e++) {
        const char *equals = strchr(*e, '=');
        if (!equals)
            continue;
        size_t name = (size_t)(equals - *e) + 1, size = strlen(*e);
        int seen = 0;
        for (char **before = environ; before < e && !seen; before++)
            seen = strncmp(*before, *e, name) == 0;
        if (seen)
            continue;
        *out++ = '\0';
        memcpy(out, *e, size);
        out += size;
    }
    *length = (size_t)(out - request);
    return request;
}

/* Milliseconds to wait until ``due`` (rounded up, as Python's poll does), -1 for ever. */
static int until(double due)
{
    if (due < 0)
        return -1;
    double left = (due - now()) * 1000;
    return left <= 0 ? 0 : (int)left + ((double)(int)left < left);
}

/* client.py's _wait: 1 once the answer (or the server's end) is there to read, 0 when the
 * deadline has passed since the message was all in (fd 0 a pipe no one writes any more). */
static int wait_answer(int sock, double deadline)
{
    struct pollfd watch[2] = {{.fd = sock, .events = POLLIN}, {.fd = 0, .events = 0}};
    struct stat info;
    int arriving = fstat(0, &info) == 0 && S_ISFIFO(info.st_mode);
    double due = arriving ? -1 : now() + deadline;
    for (;;) {
        int ready = poll(watch, arriving ? 2 : 1, until(due));
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready == 0)
            return 0;
        if (ready < 0 || watch[0].revents)
            return 1; /* a poll that fails: the read says what is wrong */
        arriving = 0; /* POLLHUP on fd 0: the message is in, the server's time starts now */
        due = now() + deadline;
    }
}

/* client.py's _receive: the answer's length in ``answer`` and its descriptors, or -errno. A
 * server that closed with our request unread leaves ECONNRESET before its answer. */
static long receive(int sock, double deadline, int fds[], int *count)
{
    union {
        char space[CMSG_SPACE(2 * sizeof(int))]; /* wire.FDS_SPACE */
        struct cmsghdr align;
    } control;
    struct iovec data = {.iov_base = answer, .iov_len = MAX_ANSWER};
    struct msghdr message = {.msg_iov = &data, .msg_iovlen = 1};
    ssize_t got;
    int reset = 0;
    for (;;) {
        message.msg_control = control.space;
        message.msg_controllen = sizeof control.space;
        got = recvmsg(sock, &message, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (got >= 0)
            break;
        if (errno == EINTR)
            continue;
        if (reset) /* nothing behind the reset: it is the answer's read that failed */
            return -ECONNRESET;
        if (errno == ECONNRESET) {
            reset = 1; /* the answer, if any, is behind it: read it without waiting */
            continue;
        }
        struct pollfd watch = {.fd = sock, .events = POLLIN};
        if (errno != EAGAIN)
            return -errno;
        if (poll(&watch, 1, until(now() + deadline)) == 0)
            return -ETIMEDOUT; /* as the Python client's socket timeout */
    }
    *count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (size_t at = 0; at + sizeof(int) <= c->cmsg_len - CMSG_LEN(0) && *count < 2;
                 at += sizeof(int))
                memcpy(&fds[(*count)++], CMSG_DATA(c) + at, sizeof(int));
    return (long)got;
}

/* wire._short_number: 1 to MAX_DIGITS ASCII digits; its value in *value. */
static int number(const char *field, long long *value)
{
    size_t length = strlen(field);
    if (length == 0 || length > MAX_DIGITS || strspn(field, "0123456789") != length)
        return 0;
    *value = strtoll(field, NULL, 10);
    return 1;
}

static void close_all(const int fds[], int count)
{
    for (int i = 0; i < count; i++)
        close(fds[i]);
}

/* wire.unpack_answer, then client.py's _carry_out: write the line, and exec qmail-queue or
 * exit with the code. Returns (to fail over to Python) only when the answer makes no sense. */
static const char *carry_out(char **argv, long length, int fds[], int count)
{
    const char *field[7], *at = answer, *end = answer + length;
    for (int i = 0; i < 6; i++) {
        const char *nul = memchr(at, '\0', (size_t)(end - at));
        if (!nul)
            return FAILED "=ended";
        field[i] = at;
        at = nul + 1;
    }
    field[6] = at;
    long long code, errfd;
    if (strcmp(field[0], MAGIC) != 0)
        return FAILED "=ended";
    int exec = strcmp(field[1], "exec") == 0;
    if ((!exec && strcmp(field[1], "exit") != 0) || !number(field[2], &code) ||
        !number(field[3], &errfd))
        return FAILED "=nonsense";
    struct iovec line[2] = {{(void *)field[5], strlen(field[5])}, {(void *)"\n", 1}};
    ssize_t written = writev(2, line, 2);
    (void)written;
    if (exec && count == 2) {
        /* handoff.execute: fd 0 and 1 for qmail-queue, SIGPIPE and SIGXFSZ as they were */
        dup2(fds[0], 0);
        dup2(fds[1], 1);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGXFSZ, SIG_DFL);
        char *program[] = {(char *)field[4], NULL};
        execv(field[4], program);
        snprintf(state, sizeof state, FAILED "=exec:%d:%s", errno, field[4]);
        wrapper(argv, state);
    }
    close_all(fds, count);
    if (end > field[6] && usable(errfd)) {
        written = write((int)errfd, field[6], (size_t)(end - field[6]));
        (void)written;
    }
    exit((int)(code & 0xff));
}

int main(int argc, char **argv)
{
    char *none[] = {NULL, NULL};
    const char *path = getenv("QQF_SOCKET");
    if (argc < 1)
        argv = none;
    if (argv[1] || !path || !*path || isatty(0))
        wrapper(argv, NULL); /* a command, one-shot, or a person at a terminal */
    if (strlen(path) > UNIX_PATH)
        wrapper(argv, NULL); /* Python words it (nothing was tried) */
    signal(SIGPIPE, SIG_IGN); /* as CPython: a closed pipe is an error, not our death */
    signal(SIGXFSZ, SIG_IGN);
    double deadline = seconds(getenv("QQF_SOCKETTIMEOUT"));
    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int problem = sock < 0 ? errno : connect_to(sock, path, deadline);
    if (problem < 0)
        wrapper(argv, FAILED "=busy");
    if (problem > 0) {
        snprintf(state, sizeof state, FAILED "=unreachable:%d", problem);
        wrapper(argv, state);
    }
    size_t length = 0;
    char *request = pack_request(&length);
    union {
        char space[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec data = {.iov_base = request, .iov_len = length};
    struct msghdr message = {.msg_iov = &data, .msg_iovlen = 1, .msg_control = control.space,
                             .msg_controllen = sizeof control.space};
    struct cmsghdr *rights = CMSG_FIRSTHDR(&message);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(2 * sizeof(int));
    memcpy(CMSG_DATA(rights), (int[]){0, 1}, 2 * sizeof(int));
    for (;;) { /* client.py's _send: only a request too big for the server is a failure here */
        if (request && sendmsg(sock, &message, MSG_NOSIGNAL) >= 0)
            break;
        if (!request || errno == EMSGSIZE || errno == ENOBUFS) {
            snprintf(state, sizeof state, FAILED "=toobig:%zu", length);
            wrapper(argv, state);
        }
        struct pollfd watch = {.fd = sock, .events = POLLOUT};
        if (errno == EINTR || (errno == EAGAIN && poll(&watch, 1, until(now() + deadline)) > 0))
            continue;
        break; /* any other failure: the answer's read says what became of the request */
    }
    free(request);
    if (!wait_answer(sock, deadline))
        wrapper(argv, FAILED "=noanswer");
    int fds[2], count = 0;
    long got = receive(sock, deadline, fds, &count);
    if (got < 0) {
        snprintf(state, sizeof state, FAILED "=midmessage:%ld", -got);
        wrapper(argv, state);
    }
    const char *failure = carry_out(argv, got, fds, count);
    close_all(fds, count);
    wrapper(argv, failure);
}
