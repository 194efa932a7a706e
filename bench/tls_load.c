/*
 * tls_load: load generator and PROXY-aware echo backend for bench/tls.py.
 *
 * Compiled by tls.py at start (gcc -O2 ... -lssl -lcrypto -lpthread) into a temporary
 * directory.  Only 127.0.0.1 is used.  Every loop is bounded in time.
 *
 *   tls_load hs PORT CONC SECONDS [plain]
 *       CONC connections at once, each in a loop for SECONDS: connect, TLS handshake
 *       (full: no session is kept or offered), write 1 byte, read the 1-byte echo,
 *       close (a close_notify is sent, not waited for).  "plain": the same without
 *       TLS.  One epoll loop.  Prints one JSON line: cycles, errors, per-cycle
 *       latency p50/p99, the first connection's TLS version, cipher, group and
 *       signature, and this process's CPU seconds.
 *   tls_load up|down PORT BYTES CONNS
 *       CONNS TLS connections (a thread each) move BYTES in all to / from the
 *       proxybench backend (pb_backend: 24-byte header 0xB7 'U'|'D' ... length; 'U'
 *       is acknowledged with the 8-byte count once the backend has read it all, 'D'
 *       ends with the last byte read).  Time runs from the first byte written after
 *       the handshakes to the last ack / byte.  One JSON line.
 *   tls_load backend PORT
 *       Echo backend that first reads and skips a PROXY protocol header if the
 *       connection starts with one (v1: "PROXY ...\r\n", v2: the 12-byte signature,
 *       16-byte header and its address block), then echoes.  Prints READY; on
 *       SIGTERM prints one JSON line with how many connections brought a v1, v2, no
 *       or a malformed header, and exits.
 *
 * The client offers TLS 1.3 only, TLS_AES_128_GCM_SHA256 only, group X25519 only
 * (override with TLS_LOAD_SUITE / TLS_LOAD_GROUP in the environment); it does not
 * verify the certificate (the server's cost is what is measured).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static struct sockaddr_in target;

static SSL_CTX *client_ctx(void) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    const char *suite = getenv("TLS_LOAD_SUITE");
    const char *group = getenv("TLS_LOAD_GROUP");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_set_ciphersuites(ctx, suite ? suite : "TLS_AES_128_GCM_SHA256") != 1 ||
        SSL_CTX_set1_groups_list(ctx, group ? group : "X25519") != 1) {
        fprintf(stderr, "tls_load: bad TLS_LOAD_SUITE / TLS_LOAD_GROUP\n");
        exit(2);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    return ctx;
}

static char tlsinfo[512] = "null";

static void record_info(SSL *ssl) {
    int gnid = SSL_get_negotiated_group(ssl);
    int snid = 0;
    SSL_get_peer_signature_type_nid(ssl, &snid);
    X509 *cert = SSL_get1_peer_certificate(ssl);
    char key[64] = "?";
    if (cert) {
        EVP_PKEY *pk = X509_get0_pubkey(cert);
        if (pk) snprintf(key, sizeof key, "%s-%d", OBJ_nid2sn(EVP_PKEY_get_base_id(pk)), EVP_PKEY_get_bits(pk));
        X509_free(cert);
    }
    snprintf(tlsinfo, sizeof tlsinfo,
             "{\"version\": \"%s\", \"cipher\": \"%s\", \"group\": \"%s\", \"signature\": \"%s\", \"key\": \"%s\"}",
             SSL_get_version(ssl), SSL_get_cipher_name(ssl), gnid ? OBJ_nid2sn(gnid & 0xffff) : "?",
             snid ? OBJ_nid2sn(snid) : "?", key);
}

/* ------------------------------------------------------------------ hs */

enum { S_CONNECT, S_HS, S_WRITE, S_READ };

typedef struct {
    int fd;
    SSL *ssl;
    int state;
    double t0;
} hconn;

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int mode_hs(int conc, double seconds, int plain) {
    SSL_CTX *ctx = plain ? NULL : client_ctx();
    int ep = epoll_create1(0);
    hconn *cs = calloc(conc, sizeof *cs);
    size_t nlat = 0, caplat = 1 << 20;
    double *lat = malloc(caplat * sizeof *lat);
    long cycles = 0, err_connect = 0, err_tls = 0, err_io = 0;
    int first = 1;
    double t_start = now(), t_end = t_start + seconds, c0 = cpu_self();
    int active = 0;

#define START(c)                                                                     \
    do {                                                                             \
        (c)->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);                   \
        int one_ = 1;                                                                \
        setsockopt((c)->fd, IPPROTO_TCP, TCP_NODELAY, &one_, sizeof one_);           \
        (c)->t0 = now();                                                             \
        (c)->state = S_CONNECT;                                                      \
        (c)->ssl = NULL;                                                             \
        connect((c)->fd, (struct sockaddr *)&target, sizeof target);                 \
        struct epoll_event ev_ = {.events = EPOLLOUT, .data.ptr = (c)};              \
        epoll_ctl(ep, EPOLL_CTL_ADD, (c)->fd, &ev_);                                 \
        active++;                                                                    \
    } while (0)

    for (int i = 0; i < conc; i++) START(&cs[i]);
    struct epoll_event evs[256];
    while (active > 0) {
        double t = now();
        if (t > t_end + 5) break; /* stragglers: counted as io errors below */
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            hconn *c = evs[k].data.ptr;
            int want = 0; /* EPOLLIN / EPOLLOUT to wait for, 0 = finished, -1 = failed */
            long *errc = &err_io;
            if (c->state == S_CONNECT) {
                int e = 0;
                socklen_t l = sizeof e;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l);
                if (e) { want = -1; errc = &err_connect; goto done; }
                if (plain) c->state = S_WRITE;
                else {
                    c->ssl = SSL_new(ctx);
                    SSL_set_fd(c->ssl, c->fd);
                    SSL_set_connect_state(c->ssl);
                    c->state = S_HS;
                }
            }
            for (;;) {
                if (c->state == S_HS) {
                    int r = SSL_do_handshake(c->ssl);
                    if (r == 1) {
                        if (first) { record_info(c->ssl); first = 0; }
                        c->state = S_WRITE;
                        continue;
                    }
                    int e = SSL_get_error(c->ssl, r);
                    want = e == SSL_ERROR_WANT_READ ? EPOLLIN : e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : -1;
                    if (want == -1) errc = &err_tls;
                    break;
                } else if (c->state == S_WRITE) {
                    int r = plain ? (int)send(c->fd, "x", 1, MSG_NOSIGNAL) : SSL_write(c->ssl, "x", 1);
                    if (r == 1) { c->state = S_READ; continue; }
                    if (plain) want = (r < 0 && errno == EAGAIN) ? EPOLLOUT : -1;
                    else {
                        int e = SSL_get_error(c->ssl, r);
                        want = e == SSL_ERROR_WANT_READ ? EPOLLIN : e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : -1;
                    }
                    break;
                } else { /* S_READ */
                    char b[64];
                    int r = plain ? (int)recv(c->fd, b, sizeof b, 0) : SSL_read(c->ssl, b, sizeof b);
                    if (r > 0) { want = 0; break; }
                    if (plain) want = (r < 0 && errno == EAGAIN) ? EPOLLIN : -1;
                    else {
                        int e = SSL_get_error(c->ssl, r);
                        want = e == SSL_ERROR_WANT_READ ? EPOLLIN : e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : -1;
                    }
                    break;
                }
            }
        done:
            if (want > 0) {
                struct epoll_event ev = {.events = want, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            if (want == 0) {
                double t1 = now();
                cycles++;
                if (nlat < caplat) lat[nlat++] = t1 - c->t0;
                if (c->ssl) SSL_shutdown(c->ssl); /* sends close_notify; not waited for */
            } else {
                (*errc)++;
            }
            if (c->ssl) SSL_free(c->ssl);
            c->ssl = NULL;
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            active--;
            if (now() < t_end) START(c);
        }
    }
    double elapsed = now() - t_start;
    err_io += active; /* still open 5 s after the end: counted as failed */
    qsort(lat, nlat, sizeof *lat, cmpd);
    double p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(size_t)(nlat * 0.99)] : 0;
    printf("{\"cycles\": %ld, \"seconds\": %.4f, \"per_s\": %.1f, \"err_connect\": %ld, \"err_tls\": %ld,"
           " \"err_io\": %ld, \"p50_us\": %.0f, \"p99_us\": %.0f, \"gen_cpu_s\": %.3f, \"tls\": %s}\n",
           cycles, elapsed, elapsed > 0 ? cycles / elapsed : 0, err_connect, err_tls, err_io, p50 * 1e6,
           p99 * 1e6, cpu_self() - c0, plain ? "null" : tlsinfo);
    return 0;
}

/* ------------------------------------------------------------------ bulk */

typedef struct {
    int up;
    uint64_t bytes;
    SSL_CTX *ctx;
    SSL *ssl;
    int fd;
    double t_first, t_last;
    int ok;
    char err[160];
} bconn;

static pthread_barrier_t barrier;

static int ssl_all(SSL *ssl, const unsigned char *p, size_t n) {
    while (n) {
        size_t w = 0;
        if (SSL_write_ex(ssl, p, n, &w) != 1) return -1;
        p += w;
        n -= w;
    }
    return 0;
}

static void *bulk_thread(void *arg) {
    bconn *b = arg;
    static const size_t CH = 256 * 1024;
    unsigned char *buf = malloc(CH);
    memset(buf, 'b', CH);
    b->ok = 0;
    int pass = 0;
    b->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(b->fd, (struct sockaddr *)&target, sizeof target) != 0) {
        snprintf(b->err, sizeof b->err, "connect: %s", strerror(errno));
        goto wait;
    }
    b->ssl = SSL_new(b->ctx);
    SSL_set_fd(b->ssl, b->fd);
    if (SSL_connect(b->ssl) != 1) {
        snprintf(b->err, sizeof b->err, "handshake failed");
        goto wait;
    }
    record_info(b->ssl);
    pass = 1;
wait:
    pthread_barrier_wait(&barrier);
    if (!pass) { free(buf); return NULL; }
    unsigned char hdr[24] = {0xB7, b->up ? 'U' : 'D'};
    memcpy(hdr + 8, &b->bytes, 8);
    b->t_first = now();
    if (ssl_all(b->ssl, hdr, sizeof hdr) != 0) { snprintf(b->err, sizeof b->err, "write header"); goto out; }
    if (b->up) {
        uint64_t left = b->bytes;
        while (left) {
            size_t n = left < CH ? left : CH;
            if (ssl_all(b->ssl, buf, n) != 0) { snprintf(b->err, sizeof b->err, "write failed"); goto out; }
            left -= n;
        }
        unsigned char ack[8];
        size_t got = 0;
        while (got < 8) {
            size_t r = 0;
            if (SSL_read_ex(b->ssl, ack + got, 8 - got, &r) != 1) { snprintf(b->err, sizeof b->err, "no ack"); goto out; }
            got += r;
        }
        uint64_t cnt;
        memcpy(&cnt, ack, 8);
        if (cnt != b->bytes) { snprintf(b->err, sizeof b->err, "ack %llu", (unsigned long long)cnt); goto out; }
    } else {
        uint64_t got = 0;
        while (got < b->bytes) {
            size_t r = 0;
            if (SSL_read_ex(b->ssl, buf, CH, &r) != 1) { snprintf(b->err, sizeof b->err, "short read %llu", (unsigned long long)got); goto out; }
            got += r;
        }
    }
    b->t_last = now();
    b->ok = 1;
out:
    SSL_shutdown(b->ssl);
    free(buf);
    return NULL;
}

static int mode_bulk(int up, uint64_t bytes, int conns) {
    SSL_CTX *ctx = client_ctx();
    bconn *bs = calloc(conns, sizeof *bs);
    pthread_t *th = calloc(conns, sizeof *th);
    pthread_barrier_init(&barrier, NULL, conns);
    double c0 = cpu_self();
    for (int i = 0; i < conns; i++) {
        bs[i].up = up;
        bs[i].bytes = bytes / conns;
        bs[i].ctx = ctx;
        pthread_create(&th[i], NULL, bulk_thread, &bs[i]);
    }
    double t0 = 1e300, t1 = 0;
    int ok = 0;
    uint64_t moved = 0;
    const char *err = "";
    for (int i = 0; i < conns; i++) {
        pthread_join(th[i], NULL);
        if (bs[i].ok) {
            ok++;
            moved += bs[i].bytes;
            if (bs[i].t_first < t0) t0 = bs[i].t_first;
            if (bs[i].t_last > t1) t1 = bs[i].t_last;
        } else err = bs[i].err;
    }
    double secs = ok ? t1 - t0 : 0;
    printf("{\"ok\": %d, \"conns\": %d, \"bytes\": %llu, \"seconds\": %.4f, \"MBps\": %.1f, \"gen_cpu_s\": %.3f,"
           " \"error\": \"%s\", \"tls\": %s}\n",
           ok, conns, (unsigned long long)moved, secs, secs > 0 ? moved / secs / 1e6 : 0, cpu_self() - c0, err, tlsinfo);
    for (int i = 0; i < conns; i++) {
        if (bs[i].ssl) SSL_free(bs[i].ssl);
        close(bs[i].fd);
    }
    return ok == conns ? 0 : 1;
}

/* ------------------------------------------------------------------ backend */

typedef struct {
    int fd;
    int skipping; /* still reading the header */
    unsigned char h[536];
    int hl;
} pconn;

static volatile sig_atomic_t stop_flag;
static void on_term(int s) { (void)s; stop_flag = 1; }

static long n_v1, n_v2, n_none, n_bad;
static const unsigned char V2SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Returns the header's length once known and complete, 0 if more bytes are needed, -1 if malformed. */
static int header_len(const unsigned char *h, int n, int *kind) {
    if (n < 1) return 0;
    if (h[0] == 'P') {
        *kind = 1;
        for (int i = 0; i + 1 < n; i++)
            if (h[i] == '\r' && h[i + 1] == '\n') return memcmp(h, "PROXY ", n < 6 ? n : 6) == 0 ? i + 2 : -1;
        return n >= 107 ? -1 : 0;
    }
    if (h[0] == 0x0D) {
        *kind = 2;
        if (n < 16) return memcmp(h, V2SIG, n < 12 ? n : 12) == 0 ? 0 : -1;
        if (memcmp(h, V2SIG, 12) != 0 || (h[12] >> 4) != 2) return -1;
        int len = 16 + (h[14] << 8 | h[15]);
        return n >= len ? len : 0;
    }
    *kind = 0;
    return 0;
}

static int mode_backend(int port) {
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(ls, 4096) != 0) {
        perror("tls_load backend: bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("READY\n");
    fflush(stdout);
    struct epoll_event evs[256];
    while (!stop_flag) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            pconn *c = evs[k].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    pconn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    nc->skipping = 1;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            unsigned char buf[16384];
            int close_it = 0;
            for (;;) {
                ssize_t r = recv(c->fd, buf, sizeof buf, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { close_it = 1; break; }
                if (r < 0) break;
                const unsigned char *p = buf;
                size_t len = (size_t)r;
                if (c->skipping) {
                    size_t take = sizeof c->h - c->hl;
                    if (take > len) take = len;
                    memcpy(c->h + c->hl, p, take);
                    c->hl += take;
                    int kind = 0;
                    int hl = header_len(c->h, c->hl, &kind);
                    if (hl < 0 || (hl == 0 && c->hl == (int)sizeof c->h)) { n_bad++; close_it = 1; break; }
                    if (kind == 0) { n_none++; c->skipping = 0; }          /* echo everything */
                    else if (hl == 0) continue;                            /* more header to come */
                    else {
                        if (kind == 1) n_v1++; else n_v2++;
                        c->skipping = 0;
                        /* what followed the header in this read (h holds it) */
                        size_t before = c->hl - take;         /* header bytes from earlier reads */
                        size_t used = (size_t)hl - before;    /* of this read */
                        p += used;
                        len -= used;
                    }
                }
                if (len) (void)!send(c->fd, p, len, MSG_NOSIGNAL);
            }
            if (close_it) {
                close(c->fd);
                free(c);
            }
        }
    }
    printf("{\"v1\": %ld, \"v2\": %ld, \"none\": %ld, \"bad\": %ld}\n", n_v1, n_v2, n_none, n_bad);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: tls_load hs PORT CONC SECONDS [plain] | up|down PORT BYTES CONNS | backend PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    target.sin_family = AF_INET;
    target.sin_port = htons(atoi(argv[2]));
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (strcmp(argv[1], "hs") == 0 && argc >= 5)
        return mode_hs(atoi(argv[3]), atof(argv[4]), argc > 5 && strcmp(argv[5], "plain") == 0);
    if ((strcmp(argv[1], "up") == 0 || strcmp(argv[1], "down") == 0) && argc >= 5)
        return mode_bulk(argv[1][0] == 'u', strtoull(argv[3], NULL, 10), atoi(argv[4]));
    if (strcmp(argv[1], "backend") == 0) return mode_backend(atoi(argv[2]));
    fprintf(stderr, "tls_load: bad arguments\n");
    return 2;
}
