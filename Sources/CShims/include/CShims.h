#ifndef DISCO_CSHIMS_H
#define DISCO_CSHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>

/// A preallocated batch of UDP datagrams for recvmmsg/sendmmsg.
///
/// Every buffer, address and control block is allocated once in `disco_udp_batch_create`;
/// receiving and sending reuse them, so the UDP loop does not allocate per datagram.
/// The control blocks carry IP_PKTINFO / IPV6_PKTINFO so that a socket bound to a wildcard
/// address answers from the address the query was sent to.
typedef struct disco_udp_batch disco_udp_batch;

disco_udp_batch *disco_udp_batch_create(unsigned count, unsigned in_bytes, unsigned out_bytes);
void disco_udp_batch_destroy(disco_udp_batch *batch);

/// Receives up to `count` datagrams (blocking for the first one, then whatever is queued).
/// Returns the number received, 0 on a timeout or EINTR, or -errno.
int disco_udp_batch_recv(int fd, disco_udp_batch *batch);

/// Sends the responses whose length was set with `disco_udp_batch_set_out_length`
/// (entries with length 0 are skipped). Returns the number sent or -errno.
int disco_udp_batch_send(int fd, disco_udp_batch *batch, unsigned received);

uint8_t *disco_udp_batch_in(disco_udp_batch *batch, unsigned index);
unsigned disco_udp_batch_in_length(const disco_udp_batch *batch, unsigned index);
uint8_t *disco_udp_batch_out(disco_udp_batch *batch, unsigned index);
unsigned disco_udp_batch_out_capacity(const disco_udp_batch *batch);
void disco_udp_batch_set_out_length(disco_udp_batch *batch, unsigned index, unsigned length);
/// The client's address of datagram `index`, as sockaddr (sockaddr_in or sockaddr_in6).
const struct sockaddr *disco_udp_batch_peer(const disco_udp_batch *batch, unsigned index);

/// How long the datagram at `index` waited in the socket's receive queue, in nanoseconds, from
/// its kernel receive timestamp (SO_TIMESTAMPNS, set by disco_udp_socket / disco_udp_adopt);
/// -1 if it carries none.
int64_t disco_udp_batch_waited_ns(const disco_udp_batch *batch, unsigned index);

/// Sets a UDP socket's receive buffer (SO_RCVBUF: the kernel doubles it for its bookkeeping and
/// caps it at net.core.rmem_max). Returns 0 or -errno.
int disco_udp_set_receive_buffer(int fd, int bytes);

/// Datagrams the kernel dropped at this socket because its receive buffer was full
/// (SO_MEMINFO's SK_MEMINFO_DROPS), or -errno.
int64_t disco_udp_socket_drops(int fd);

/// Opens a UDP socket bound to `address` (sockaddr_in/in6) with SO_REUSEPORT, packet-info
/// reception and a receive timeout, so a worker can notice shutdown. Returns fd or -errno.
int disco_udp_socket(const struct sockaddr *address, socklen_t length, int receive_timeout_ms,
                     int receive_buffer_bytes);

/// The port a socket is bound to (host byte order), or -errno.
int disco_socket_port(int fd);

/* A UDP socket passed by the service manager (socket activation): the options
 * disco_udp_socket sets, set on it (packet info when its address is a wildcard). Returns 1
 * when it is bound to a wildcard address, 0 when not, -errno on failure. */
int disco_udp_adopt(int fd, int receive_timeout_ms, int receive_buffer_bytes);

/* SOCK_DGRAM, SOCK_STREAM, ... of fd, or -errno. */
int disco_socket_type(int fd);

/* The socket's bound address as text ("127.0.0.1", "::") and port; 0 or -errno. */
int disco_socket_address(int fd, char *host, int host_length, int *port);

/// Parses "a.b.c.d" or an IPv6 literal with a port into a sockaddr_storage.
/// Returns the sockaddr length or 0 if the text is not an address.
socklen_t disco_parse_address(const char *host, uint16_t port, struct sockaddr_storage *out);

/// Formats a sockaddr as "host:port" / "[host]:port" into `out`; returns its length.
int disco_format_address(const struct sockaddr *address, char *out, size_t capacity);

/// Puts the calling thread in SCHED_IDLE: it runs when no normal thread wants the CPU, and a
/// normal thread that wakes preempts it at once. Returns 0, or -errno.
int disco_thread_set_idle_policy(void);

/// Puts the calling thread in SCHED_FIFO at `priority` (1–99), or back in SCHED_OTHER (its nice
/// value unchanged) when `priority` is 0. Needs CAP_SYS_NICE or RLIMIT_RTPRIO ≥ `priority`
/// (systemd: LimitRTPRIO=) to raise; lowering always works. Returns 0, or -errno.
int disco_thread_set_realtime(int priority);

/// The CPU time the calling thread has used, in nanoseconds (CLOCK_THREAD_CPUTIME_ID: a
/// system call, not a vDSO read).
uint64_t disco_thread_cpu_nanoseconds(void);

/// Names the calling thread for the kernel (`top -H`, /proc/.../comm): at most 15 bytes.
void disco_thread_set_name(const char *name);

/// Lowers the calling thread's scheduling priority: its nice value becomes the process's
/// (the main thread's) plus `increment`, at most 19. Linux keeps nice per thread, so the DNS
/// workers keep the process's. Returns 0 or -errno.
int disco_thread_lower_priority(int increment);

/// CLOCK_MONOTONIC_COARSE in milliseconds: the clock of slow start, read by the registry
/// view builder and by the answer path (a vDSO read, no system call).
uint64_t disco_monotonic_milliseconds(void);

/// Sends a notification to systemd (sd_notify protocol) if NOTIFY_SOCKET is set.
/// Returns 1 if sent, 0 if not under systemd, -errno on error.
int disco_sd_notify(const char *state);

/// Returns the heap's free memory to the kernel (glibc's malloc_trim): after a large zone is
/// loaded, the parser's temporary records are free but still resident otherwise.
void disco_release_free_memory(void);

/// Allocations of at least `bytes` get pages of their own (mmap), returned to the kernel when
/// freed (glibc's M_MMAP_THRESHOLD, which also stops glibc from raising that threshold as
/// large blocks are freed: after a zone load it would otherwise place the next load's part
/// buffers in the heap, where their freed pages stay).
void disco_map_large_allocations(size_t bytes);

#endif
