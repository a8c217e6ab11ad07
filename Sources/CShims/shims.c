#define _GNU_SOURCE
#include "CShims.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <linux/sock_diag.h>
#include <time.h>
#include <unistd.h>

/* Control bytes per datagram: a receive timestamp (CMSG_SPACE(16) = 32) and, on a wildcard
 * socket, packet info (at most CMSG_SPACE(20) = 40). The kernel writes the timestamp first: too
 * small a block would lose the packet info, and a reply would leave from the wrong address. */
#define DISCO_CONTROL_BYTES 128

struct disco_udp_batch {
    unsigned count;
    unsigned in_bytes;
    unsigned out_bytes;
    struct mmsghdr *in_headers;
    struct iovec *in_iov;
    struct mmsghdr *out_headers;
    struct iovec *out_iov;
    struct sockaddr_storage *peers;
    uint8_t *in_buffers;
    uint8_t *out_buffers;
    unsigned *out_lengths;
    uint8_t *in_control;
    uint8_t *out_control;
};

disco_udp_batch *disco_udp_batch_create(unsigned count, unsigned in_bytes, unsigned out_bytes) {
    disco_udp_batch *b = calloc(1, sizeof(*b));
    if (!b) return NULL;
    b->count = count;
    b->in_bytes = in_bytes;
    b->out_bytes = out_bytes;
    b->in_headers = calloc(count, sizeof(struct mmsghdr));
    b->in_iov = calloc(count, sizeof(struct iovec));
    b->out_headers = calloc(count, sizeof(struct mmsghdr));
    b->out_iov = calloc(count, sizeof(struct iovec));
    b->peers = calloc(count, sizeof(struct sockaddr_storage));
    b->in_buffers = calloc(count, in_bytes);
    b->out_buffers = calloc(count, out_bytes);
    b->out_lengths = calloc(count, sizeof(unsigned));
    b->in_control = calloc(count, DISCO_CONTROL_BYTES);
    b->out_control = calloc(count, DISCO_CONTROL_BYTES);
    if (!b->in_headers || !b->in_iov || !b->out_headers || !b->out_iov || !b->peers ||
        !b->in_buffers || !b->out_buffers || !b->out_lengths || !b->in_control || !b->out_control) {
        disco_udp_batch_destroy(b);
        return NULL;
    }
    return b;
}


void disco_udp_batch_destroy(disco_udp_batch *b) {
    if (!b) return;
    free(b->in_headers); free(b->in_iov); free(b->out_headers); free(b->out_iov);
    free(b->peers); free(b->in_buffers); free(b->out_buffers); free(b->out_lengths);
    free(b->in_control); free(b->out_control);
    free(b);
}

int disco_udp_batch_recv(int fd, disco_udp_batch *b) {
    for (unsigned i = 0; i < b->count; i++) {
        b->in_iov[i].iov_base = b->in_buffers + (size_t)i * b->in_bytes;
        b->in_iov[i].iov_len = b->in_bytes;
        struct msghdr *h = &b->in_headers[i].msg_hdr;
        h->msg_name = &b->peers[i];
        h->msg_namelen = sizeof(struct sockaddr_storage);
        h->msg_iov = &b->in_iov[i];
        h->msg_iovlen = 1;
        h->msg_control = b->in_control + (size_t)i * DISCO_CONTROL_BYTES;
        h->msg_controllen = DISCO_CONTROL_BYTES;
        h->msg_flags = 0;
        b->in_headers[i].msg_len = 0;
        b->out_lengths[i] = 0;
    }
    /* Block for the first datagram only; take whatever else is already queued. */
    int n = recvmmsg(fd, b->in_headers, b->count, MSG_WAITFORONE, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
        return -errno;
    }
    return n;
}

int64_t disco_udp_batch_waited_ns(const disco_udp_batch *b, unsigned i) {
    if (i >= b->count) return -1;
    struct msghdr *h = &b->in_headers[i].msg_hdr;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec received, now;
            memcpy(&received, CMSG_DATA(c), sizeof(received));
            clock_gettime(CLOCK_REALTIME, &now);
            return (int64_t)(now.tv_sec - received.tv_sec) * 1000000000 + (now.tv_nsec - received.tv_nsec);
        }
    }
    return -1;
}

int disco_udp_set_receive_buffer(int fd, int bytes) {
    return setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes)) == 0 ? 0 : -errno;
}

int64_t disco_udp_socket_drops(int fd) {
    uint32_t info[SK_MEMINFO_VARS];
    socklen_t len = sizeof(info);
    memset(info, 0, sizeof(info));
    if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, info, &len) < 0) return -errno;
    return len > SK_MEMINFO_DROPS * sizeof(uint32_t) ? (int64_t)info[SK_MEMINFO_DROPS] : 0;
}

/* Copies the destination address of a received datagram into the control block of its reply
 * (IP_PKTINFO's ipi_spec_dst / IPV6_PKTINFO's address), so a wildcard-bound socket replies
 * from the address the client used. */
static size_t reply_control(const struct msghdr *in, uint8_t *out_control) {
    memset(out_control, 0, DISCO_CONTROL_BYTES);
    for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)in); c; c = CMSG_NXTHDR((struct msghdr *)in, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            struct cmsghdr *o = (struct cmsghdr *)out_control;
            o->cmsg_level = IPPROTO_IP;
            o->cmsg_type = IP_PKTINFO;
            o->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
            struct in_pktinfo reply;
            memset(&reply, 0, sizeof(reply));
            reply.ipi_spec_dst = info.ipi_addr;
            memcpy(CMSG_DATA(o), &reply, sizeof(reply));
            return CMSG_SPACE(sizeof(struct in_pktinfo));
        }
        if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
            struct in6_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            struct cmsghdr *o = (struct cmsghdr *)out_control;
            o->cmsg_level = IPPROTO_IPV6;
            o->cmsg_type = IPV6_PKTINFO;
            o->cmsg_len = CMSG_LEN(sizeof(struct in6_pktinfo));
            info.ipi6_ifindex = 0;
            memcpy(CMSG_DATA(o), &info, sizeof(info));
            return CMSG_SPACE(sizeof(struct in6_pktinfo));
        }
    }
    return 0;
}

int disco_udp_batch_send(int fd, disco_udp_batch *b, unsigned received) {
    unsigned m = 0;
    for (unsigned i = 0; i < received && i < b->count; i++) {
        if (b->out_lengths[i] == 0) continue;
        b->out_iov[m].iov_base = b->out_buffers + (size_t)i * b->out_bytes;
        b->out_iov[m].iov_len = b->out_lengths[i];
        struct msghdr *h = &b->out_headers[m].msg_hdr;
        memset(h, 0, sizeof(*h));
        h->msg_name = &b->peers[i];
        h->msg_namelen = b->in_headers[i].msg_hdr.msg_namelen;
        h->msg_iov = &b->out_iov[m];
        h->msg_iovlen = 1;
        uint8_t *control = b->out_control + (size_t)m * DISCO_CONTROL_BYTES;
        size_t control_len = reply_control(&b->in_headers[i].msg_hdr, control);
        if (control_len > 0) {
            h->msg_control = control;
            h->msg_controllen = control_len;
        }
        m++;
    }
    unsigned sent = 0;
    while (sent < m) {
        int n = sendmmsg(fd, b->out_headers + sent, m - sent, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            /* A reply that cannot be sent (e.g. unreachable peer) is dropped, as a lost datagram. */
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNREFUSED || errno == EPERM ||
                errno == EINVAL || errno == EHOSTUNREACH || errno == ENETUNREACH) {
                sent++;
                continue;
            }
            return -errno;
        }
        sent += (unsigned)n;
    }
    return (int)sent;
}

uint8_t *disco_udp_batch_in(disco_udp_batch *b, unsigned i) { return b->in_buffers + (size_t)i * b->in_bytes; }
unsigned disco_udp_batch_in_length(const disco_udp_batch *b, unsigned i) { return b->in_headers[i].msg_len; }
uint8_t *disco_udp_batch_out(disco_udp_batch *b, unsigned i) { return b->out_buffers + (size_t)i * b->out_bytes; }
unsigned disco_udp_batch_out_capacity(const disco_udp_batch *b) { return b->out_bytes; }
void disco_udp_batch_set_out_length(disco_udp_batch *b, unsigned i, unsigned length) { b->out_lengths[i] = length; }
const struct sockaddr *disco_udp_batch_peer(const disco_udp_batch *b, unsigned i) {
    return (const struct sockaddr *)&b->peers[i];
}

int disco_udp_socket(const struct sockaddr *address, socklen_t length, int receive_timeout_ms,
                     int receive_buffer_bytes) {
    int fd = socket(address->sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) goto fail;
    /* Packet info is needed only on a wildcard address, to answer from the address the query
     * was sent to; a socket bound to one address answers from it anyway. */
    if (address->sa_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)address;
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) goto fail;
        if (IN6_IS_ADDR_UNSPECIFIED(&v6->sin6_addr) &&
            setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one)) < 0) goto fail;
    } else {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)address;
        if (v4->sin_addr.s_addr == htonl(INADDR_ANY) &&
            setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)) < 0) goto fail;
    }
    if (receive_buffer_bytes > 0) {
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer_bytes, sizeof(receive_buffer_bytes));
    }
    /* Receive timestamps: how long a query waited in the queue (DNS overload mode). */
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0) goto fail;
    if (receive_timeout_ms > 0) {
        struct timeval tv = { .tv_sec = receive_timeout_ms / 1000, .tv_usec = (receive_timeout_ms % 1000) * 1000 };
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) goto fail;
    }
    if (bind(fd, address, length) < 0) goto fail;
    return fd;
fail:;
    int saved = errno;
    close(fd);
    return -saved;
}

int disco_udp_adopt(int fd, int receive_timeout_ms, int receive_buffer_bytes) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return -errno;
    int one = 1, wildcard = 0;
    if (ss.ss_family == AF_INET6) {
        wildcard = IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr);
        if (wildcard && setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one)) < 0) return -errno;
    } else if (ss.ss_family == AF_INET) {
        wildcard = ((struct sockaddr_in *)&ss)->sin_addr.s_addr == htonl(INADDR_ANY);
        if (wildcard && setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)) < 0) return -errno;
    } else {
        return -EAFNOSUPPORT;
    }
    if (receive_buffer_bytes > 0) {
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer_bytes, sizeof(receive_buffer_bytes));
    }
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0) return -errno;
    if (receive_timeout_ms > 0) {
        struct timeval tv = { .tv_sec = receive_timeout_ms / 1000, .tv_usec = (receive_timeout_ms % 1000) * 1000 };
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) return -errno;
    }
    int flags = fcntl(fd, F_GETFD);
    if (flags >= 0) (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    return wildcard;
}

int disco_socket_type(int fd) {
    int type = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return -errno;
    return type;
}

int disco_socket_address(int fd, char *host, int host_length, int *port) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return -errno;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
        if (!inet_ntop(AF_INET, &v4->sin_addr, host, host_length)) return -errno;
        *port = ntohs(v4->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
        if (!inet_ntop(AF_INET6, &v6->sin6_addr, host, host_length)) return -errno;
        *port = ntohs(v6->sin6_port);
    } else {
        return -EAFNOSUPPORT;
    }
    return 0;
}

int disco_socket_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return -errno;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -EAFNOSUPPORT;
}

socklen_t disco_parse_address(const char *host, uint16_t port, struct sockaddr_storage *out) {
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        return sizeof(struct sockaddr_in);
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        return sizeof(struct sockaddr_in6);
    }
    return 0;
}

int disco_format_address(const struct sockaddr *address, char *out, size_t capacity) {
    char host[INET6_ADDRSTRLEN];
    if (address->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)address;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
        return snprintf(out, capacity, "%s:%u", host, ntohs(v4->sin_port));
    }
    if (address->sa_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)address;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
        return snprintf(out, capacity, "[%s]:%u", host, ntohs(v6->sin6_port));
    }
    return snprintf(out, capacity, "?");
}

int disco_sd_notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 0;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len >= sizeof(addr.sun_path)) return -ENAMETOOLONG;
    memcpy(addr.sun_path, path, len);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = 0; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    ssize_t n = sendto(fd, state, strlen(state), 0, (struct sockaddr *)&addr,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    int saved = errno;
    close(fd);
    return n < 0 ? -saved : 1;
}

int disco_thread_lower_priority(int increment) {
    errno = 0;
    int base = getpriority(PRIO_PROCESS, (id_t)getpid());
    if (base == -1 && errno != 0) return -errno;
    int target = base + increment;
    if (target > 19) target = 19;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (setpriority(PRIO_PROCESS, (id_t)tid, target) != 0) return -errno;
    return 0;
}

int disco_thread_set_idle_policy(void) {
    struct sched_param param = { .sched_priority = 0 };
    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (sched_setscheduler(tid, SCHED_IDLE, &param) != 0) return -errno;
    return 0;
}

int disco_thread_set_realtime(int priority) {
    struct sched_param param = { .sched_priority = priority };
    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (sched_setscheduler(tid, priority > 0 ? SCHED_FIFO : SCHED_OTHER, &param) != 0) return -errno;
    return 0;
}

uint64_t disco_thread_cpu_nanoseconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

void disco_thread_set_name(const char *name) {
    prctl(PR_SET_NAME, name, 0, 0, 0);
}

uint64_t disco_monotonic_milliseconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

void disco_release_free_memory(void) {
    malloc_trim(0);
}

void disco_map_large_allocations(size_t bytes) {
    mallopt(M_MMAP_THRESHOLD, (int)bytes);
}
