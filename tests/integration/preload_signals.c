/* An ordinary program whose signal handler writes to its TCP connection,
 * for preload_signals.sh (it knows nothing of tether).
 *
 *   preload_signals PORT RECORDS
 *
 * Connects to an echo server.  The main thread sends RECORDS records of 16
 * bytes ("M" and a sequence number) while a reader thread reads the echo;
 * a SIGALRM handler, every 300 microseconds (setitimer), sends a record of
 * its own ("H" and its sequence number) on the same socket, whichever
 * thread it interrupts -- under tether-run often one that is inside
 * tether's code.  Each send of 16 bytes is one record on TCP (a blocking
 * send of 16 bytes is never cut short by a signal once it copied them).
 * At the end the main thread sends an "E" record and shuts its writing
 * down; the reader checks that the echo is made of whole records, the M
 * and H sequences each in order and complete, then the E record, then EOF.
 * Exit 0 if so; 1 with a line saying what differed. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define REC 16

static int sock;
static atomic_long h_sent;
static atomic_int h_failed, h_busy;
static atomic_bool h_stop;
static atomic_flag h_sending = ATOMIC_FLAG_INIT;

static void record(char *r, char kind, long seq) {
  memset(r, ' ', REC);
  char tmp[REC + 1];
  snprintf(tmp, sizeof(tmp), "%c%014ld\n", kind, seq);
  memcpy(r, tmp, REC);
}

static void on_alarm(int sig) {
  (void)sig;
  int err = errno;
  atomic_fetch_add(&h_busy, 1);
  /* One handler's send at a time: the signal may come to either thread
   * while the other runs the handler (then this tick sends nothing). */
  if (!atomic_load(&h_stop) && !atomic_flag_test_and_set(&h_sending)) {
    char r[REC];
    record(r, 'H', atomic_load(&h_sent));
    if (send(sock, r, REC, MSG_NOSIGNAL) == REC)
      atomic_fetch_add(&h_sent, 1);
    else
      atomic_fetch_add(&h_failed, 1);
    atomic_flag_clear(&h_sending);
  }
  atomic_fetch_sub(&h_busy, 1);
  errno = err;
}

static int send_all(const char *r) {
  size_t off = 0;
  while (off < REC) {
    ssize_t n = send(sock, r + off, REC - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    off += (size_t)n;
  }
  return 0;
}

static long m_want;
static const char *why;
static long m_got, h_got;

static void *reader(void *arg) {
  (void)arg;
  char r[REC];
  size_t have = 0;
  bool ended = false;
  for (;;) {
    ssize_t n = recv(sock, r + have, REC - have, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      why = "recv failed";
      return NULL;
    }
    if (n == 0) {
      if (!ended || have)
        why = "EOF before the end record";
      return NULL;
    }
    have += (size_t)n;
    if (have < REC)
      continue;
    have = 0;
    char *end;
    long seq = strtol(r + 1, &end, 10);
    if (ended || end != r + REC - 1 || r[REC - 1] != '\n') {
      why = ended ? "bytes after the end record" : "a record that is not whole";
      return NULL;
    }
    if (r[0] == 'M' && seq == m_got) {
      m_got++;
    } else if (r[0] == 'H' && seq == h_got) {
      h_got++;
    } else if (r[0] == 'E' && seq == m_want) {
      ended = true;
    } else {
      why = "a record out of order";
      return NULL;
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: preload_signals PORT RECORDS\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  m_want = atol(argv[2]);
  sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (sock < 0 || connect(sock, (struct sockaddr *)&a, sizeof(a)) < 0) {
    perror("connect");
    return 1;
  }
  pthread_t t;
  if (pthread_create(&t, NULL, reader, NULL) != 0)
    return 1;
  struct sigaction sa = {0};
  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  struct itimerval it = {{0, 300}, {0, 300}};
  if (sigaction(SIGALRM, &sa, NULL) < 0 || setitimer(ITIMER_REAL, &it, NULL) < 0) {
    perror("sigaction/setitimer");
    return 1;
  }
  char r[REC];
  for (long i = 0; i < m_want; i++) {
    record(r, 'M', i);
    if (send_all(r) < 0) {
      printf("not ok: send failed: %s\n", strerror(errno));
      return 1;
    }
  }
  /* No handler's record after E: one that starts from now sends nothing,
   * and one under way is waited for. */
  atomic_store(&h_stop, true);
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  while (atomic_load(&h_busy))
    sched_yield();
  record(r, 'E', m_want);
  if (send_all(r) < 0 || shutdown(sock, SHUT_WR) < 0) {
    printf("not ok: the end record: %s\n", strerror(errno));
    return 1;
  }
  pthread_join(t, NULL);
  printf("%ld records from the main thread, %ld from the handler (%d sends failed)\n", m_got,
         h_got, atomic_load(&h_failed));
  if (!why && m_got != m_want)
    why = "records of the main thread missing";
  if (!why && (h_got != atomic_load(&h_sent) || atomic_load(&h_failed)))
    why = "records of the handler missing";
  if (!why && h_got < 10)
    why = "the handler hardly ran";
  printf("%s%s\n", why ? "not ok: " : "ok", why ? why : "");
  return why ? 1 : 0;
}
