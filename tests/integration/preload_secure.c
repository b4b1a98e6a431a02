/* Linked against libtether-preload.so itself (the loader ignores LD_PRELOAD
 * in setuid/setgid programs, but not a library the program needs), so that
 * preload_secure.sh can run it setgid: tether must then do nothing.
 *
 *   preload_secure PORT
 *
 * Connects to the echo server on PORT, echoes a few bytes, and prints
 * "secure S threads T": S is AT_SECURE, T the threads of this process
 * after the connection (tether's engine thread makes 2). */
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/socket.h>
#include <unistd.h>

static int threads(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/task");
  if (!d)
    return -1;
  struct dirent *e;
  while ((e = readdir(d)))
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

int main(int argc, char **argv) {
  if (argc != 2)
    return 2;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
    perror("connect");
    return 1;
  }
  char buf[5];
  if (write(fd, "hello", 5) != 5 || read(fd, buf, 5) != 5 || memcmp(buf, "hello", 5) != 0) {
    fprintf(stderr, "echo failed\n");
    return 1;
  }
  printf("secure %lu threads %d\n", getauxval(AT_SECURE), threads());
  close(fd);
  return 0;
}
