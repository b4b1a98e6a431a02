/* The fd table and the bookkeeping of each psock: its fd numbers (aliases),
 * their close-on-exec flags, and the epoll registrations that must follow
 * the psock from file to file (see preload.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "preload.h"

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct psock *g_all; /* every psock with at least one alias */
static struct psock **table;
static int table_cap;

int fdt_init(void) {
  struct rlimit rl;
  long cap = 65536;
  if (table)
    return 0;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY && (long)rl.rlim_max > cap)
    cap = (long)rl.rlim_max;
  if (cap > (1L << 20))
    cap = 1L << 20;
  /* calloc of this size is a fresh zero mapping: untouched pages cost nothing. */
  struct psock **t = calloc((size_t)cap, sizeof(*t));
  if (!t)
    return -ENOMEM;
  table = t;
  table_cap = (int)cap;
  return 0;
}

struct psock *fdt_get(int fd) {
  if (fd < 0 || fd >= table_cap)
    return NULL;
  return __atomic_load_n(&table[fd], __ATOMIC_ACQUIRE);
}

void fdt_set(int fd, struct psock *ps) {
  if (fd >= 0 && fd < table_cap)
    __atomic_store_n(&table[fd], ps, __ATOMIC_RELEASE);
}

struct psock *ps_new(int kind, int family) {
  struct psock *ps = calloc(1, sizeof(*ps));
  if (!ps)
    return NULL;
  pthread_mutex_init(&ps->lock, NULL);
  ps->kind = kind;
  ps->family = family;
  ps->placeholder_w = -1;
  ps->opts_sock = -1;
  pthread_mutex_lock(&g_lock);
  ps->all_next = g_all;
  if (g_all)
    g_all->all_prev = ps;
  g_all = ps;
  pthread_mutex_unlock(&g_lock);
  return ps;
}

void ps_free(struct psock *ps) {
  if (!ps)
    return;
  pthread_mutex_lock(&g_lock);
  if (ps->all_prev)
    ps->all_prev->all_next = ps->all_next;
  else if (g_all == ps)
    g_all = ps->all_next;
  if (ps->all_next)
    ps->all_next->all_prev = ps->all_prev;
  pthread_mutex_unlock(&g_lock);
  free(ps->aliases);
  free(ps->alias_cloexec);
  free(ps->regs);
  pthread_mutex_destroy(&ps->lock);
  free(ps);
}

static int alias_index(const struct psock *ps, int fd) {
  for (int i = 0; i < ps->naliases; i++)
    if (ps->aliases[i] == fd)
      return i;
  return -1;
}

bool ps_has_alias(const struct psock *ps, int fd) { return alias_index(ps, fd) >= 0; }

int ps_add_alias(struct psock *ps, int fd, bool cloexec) {
  int i = alias_index(ps, fd);
  if (i >= 0) {
    ps->alias_cloexec[i] = cloexec;
    return 0;
  }
  if (ps->naliases == ps->cap_aliases) {
    int cap = ps->cap_aliases ? ps->cap_aliases * 2 : 2;
    int *a = realloc(ps->aliases, (size_t)cap * sizeof(*a));
    if (!a)
      return -ENOMEM;
    ps->aliases = a;
    bool *c = realloc(ps->alias_cloexec, (size_t)cap * sizeof(*c));
    if (!c)
      return -ENOMEM;
    ps->alias_cloexec = c;
    ps->cap_aliases = cap;
  }
  ps->aliases[ps->naliases] = fd;
  ps->alias_cloexec[ps->naliases] = cloexec;
  ps->naliases++;
  fdt_set(fd, ps);
  return 0;
}

int ps_remove_alias(struct psock *ps, int fd) {
  int i = alias_index(ps, fd);
  if (i >= 0) {
    ps->aliases[i] = ps->aliases[ps->naliases - 1];
    ps->alias_cloexec[i] = ps->alias_cloexec[ps->naliases - 1];
    ps->naliases--;
    if (fdt_get(fd) == ps)
      fdt_set(fd, NULL);
  }
  /* A closed number's registrations are gone with it (the kernel drops an
   * epoll item when its fd is closed, if no other number shares the file,
   * and after a swap it would not). */
  for (int j = 0; j < ps->nregs;)
    if (ps->regs[j].fd == fd)
      ps->regs[j] = ps->regs[--ps->nregs];
    else
      j++;
  return ps->naliases;
}

void ps_set_cloexec(struct psock *ps, int fd, bool cloexec) {
  int i = alias_index(ps, fd);
  if (i >= 0)
    ps->alias_cloexec[i] = cloexec;
}

void ps_reg_update(struct psock *ps, int epfd, int op, int fd, const struct epoll_event *ev) {
  int i;
  for (i = 0; i < ps->nregs; i++)
    if (ps->regs[i].fd == fd && ps->regs[i].epfd == epfd)
      break;
  if (op == EPOLL_CTL_DEL) {
    if (i < ps->nregs)
      ps->regs[i] = ps->regs[--ps->nregs];
    return;
  }
  if (!ev)
    return;
  if (i == ps->nregs) {
    if (op != EPOLL_CTL_ADD)
      return;
    if (ps->nregs == ps->cap_regs) {
      int cap = ps->cap_regs ? ps->cap_regs * 2 : 2;
      struct ereg *r = realloc(ps->regs, (size_t)cap * sizeof(*r));
      if (!r)
        return;
      ps->regs = r;
      ps->cap_regs = cap;
    }
    ps->nregs++;
  }
  ps->regs[i].fd = fd;
  ps->regs[i].epfd = epfd;
  ps->regs[i].ev = *ev;
}

void ps_swap(struct psock *ps, int file) {
  for (int i = 0; i < ps->nregs; i++)
    (void)real.epoll_ctl(ps->regs[i].epfd, EPOLL_CTL_DEL, ps->regs[i].fd, NULL);
  for (int i = 0; i < ps->naliases; i++)
    if (ps->aliases[i] != file)
      (void)real.dup3(file, ps->aliases[i], ps->alias_cloexec[i] ? O_CLOEXEC : 0);
  for (int i = 0; i < ps->nregs; i++) {
    struct epoll_event ev = ps->regs[i].ev;
    (void)real.epoll_ctl(ps->regs[i].epfd, EPOLL_CTL_ADD, ps->regs[i].fd, &ev);
  }
}

void fdt_forget_epfd(int epfd) {
  pthread_mutex_lock(&g_lock);
  for (struct psock *ps = g_all; ps; ps = ps->all_next) {
    pthread_mutex_lock(&ps->lock);
    for (int j = 0; j < ps->nregs;)
      if (ps->regs[j].epfd == epfd)
        ps->regs[j] = ps->regs[--ps->nregs];
      else
        j++;
    pthread_mutex_unlock(&ps->lock);
  }
  pthread_mutex_unlock(&g_lock);
}

void fdt_each(void (*fn)(struct psock *ps, void *arg), void *arg) {
  pthread_mutex_lock(&g_lock);
  for (struct psock *ps = g_all; ps; ps = ps->all_next)
    fn(ps, arg);
  pthread_mutex_unlock(&g_lock);
}

void fdt_after_fork_child(void) {
  pthread_mutex_init(&g_lock, NULL);
  for (struct psock *ps = g_all; ps; ps = ps->all_next) {
    pthread_mutex_init(&ps->lock, NULL);
    if (ps->kind == PS_SESSION || ps->kind == PS_CONNECTING || ps->kind == PS_LISTEN)
      ps->kind = PS_ORPHAN;
    ps->s = NULL; /* the parent's; a listener keeps pl for plain accepts */
  }
}
