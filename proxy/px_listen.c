/* Listening sockets, created before workers start (and before privileges are dropped): one
 * SO_REUSEPORT socket per worker and listener. libuv 1.44 has no UV_TCP_REUSEPORT, so the
 * sockets are made by hand and handed to each loop with uv_tcp_open. */
#include "px_listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int open_one(const struct addrinfo *ai, char *err, size_t errlen, const char *label)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create a socket for %s: %s", label, strerror(errno));
        return -1;
    }
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0 ||
        (ai->ai_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", label, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* A Unix socket listener: one socket, served by worker 0 (SO_REUSEPORT does not spread Unix
 * sockets). A stale socket file from a previous run is replaced; anything else at the path is
 * left alone. The socket is connectable by every local user, like a database's own socket:
 * restrict access with the directory's permissions. */
static int open_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "unix socket path too long: %s", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "cannot listen on unix:%s: path exists and is not a socket",
                     path);
            return -1;
        }
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 || chmod(path, 0666) != 0) {
        snprintf(err, errlen, "cannot listen on unix:%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

void px_format_sockaddr(const struct sockaddr *sa, char *buf, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(buf, cap, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(buf, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        snprintf(buf, cap, "?");
    }
}

int px_resolve_bind(const struct cfg_addr *a, const char *what, struct addrinfo **res, char *err,
                    size_t errlen)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", a->port);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    *res = NULL;
    int rc = getaddrinfo(a->host, port, &hints, res);
    if (rc != 0) {
        char label[300];
        cfg_addr_format(a, label, sizeof(label));
        snprintf(err, errlen, "cannot resolve %s %s: %s", what, label, gai_strerror(rc));
        return -1;
    }
    return 0;
}

int px_listen_open(struct px_listener *l, unsigned workers, char *err, size_t errlen)
{
    const struct cfg_addr *a = &l->cfg->listen;
    char label[300];
    cfg_addr_format(a, label, sizeof(label));
    for (unsigned i = 0; i < PX_MAX_WORKERS; i++)
        l->fds[i] = -1;
    if (a->is_unix) {
        l->fds[0] = open_unix(a->host, err, errlen);
        return l->fds[0] < 0 ? -1 : 0;
    }
    struct addrinfo *res = NULL;
    if (px_resolve_bind(a, "listen address", &res, err, errlen) != 0)
        return -1;
    for (unsigned i = 0; i < workers; i++) {
        l->fds[i] = open_one(res, err, errlen, label);
        if (l->fds[i] < 0) {
            freeaddrinfo(res);
            px_listen_close(l);
            return -1;
        }
    }
    freeaddrinfo(res);
    return 0;
}

void px_listen_close(struct px_listener *l)
{
    for (unsigned i = 0; i < PX_MAX_WORKERS; i++) {
        if (l->fds[i] >= 0)
            close(l->fds[i]);
        l->fds[i] = -1;
    }
}
