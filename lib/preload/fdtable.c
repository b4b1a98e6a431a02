/* The fd table and the bookkeeping of each psock: its fd numbers (aliases),
 * their close-on-exec flags, and the epoll registrations that must follow
 * the psock from file to file, with the token tables of the program's epoll
 * instances (see preload.h). */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>

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

int fdt_limit(void) { return table_cap; }

struct psock *fdt_get(int fd) {
  if (fd < 0 || fd >= table_cap)
    return NULL;
  return __atomic_load_n(&table[fd], __ATOMIC_ACQUIRE);
}

void fdt_set(int fd, struct psock *ps) {
  if (fd >= 0 && fd < table_cap)
    __atomic_store_n(&table[fd], ps, __ATOMIC_RELEASE);
}

static void reg_unlink(struct psock *ps, struct ereg *r);

/* Freed psocks are kept here, never given back to malloc: a thread that
 * found one through the lock-free table may lock it after another thread
 * closed it (ps_hold), and must find a mutex there. */
pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct psock *pool;

static struct psock *pool_take(void) {
  pthread_mutex_lock(&pool_lock);
  struct psock *ps = pool;
  if (ps)
    pool = ps->all_next;
  pthread_mutex_unlock(&pool_lock);
  if (!ps) {
    ps = calloc(1, sizeof(*ps));
    if (ps)
      pthread_mutex_init(&ps->lock, NULL);
    return ps;
  }
  pthread_mutex_lock(&ps->lock); /* a late ps_hold may still look at it */
  memset((char *)ps + offsetof(struct psock, kind), 0, sizeof(*ps) - offsetof(struct psock, kind));
  pthread_mutex_unlock(&ps->lock);
  return ps;
}

struct psock *ps_new(int kind, int family) {
  struct psock *ps = pool_take();
  if (!ps)
    return NULL;
  ps->kind = kind;
  ps->family = family;
  ps->placeholder_w = -1;
  ps->abort_efd = -1;
  ps->opts_sock = -1;
  ps->own_fd = -1;
  static uint64_t serials;
  ps->serial = __atomic_add_fetch(&serials, 1, __ATOMIC_RELAXED);
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
  pthread_mutex_lock(&ps->lock);
  bool busy = ps->calls > 0; /* the last ps_release frees it */
  ps->free_pending = busy;
  pthread_mutex_unlock(&ps->lock);
  if (busy)
    return;
  if (ps->tab)
    ep_forget(ps);
  pthread_mutex_lock(&g_lock);
  if (ps->all_prev)
    ps->all_prev->all_next = ps->all_next;
  else if (g_all == ps)
    g_all = ps->all_next;
  if (ps->all_next)
    ps->all_next->all_prev = ps->all_prev;
  pthread_mutex_unlock(&g_lock);
  while (ps->regs)
    reg_unlink(ps, ps->regs);
  free(ps->aliases);
  free(ps->alias_cloexec);
  pthread_mutex_lock(&ps->lock);
  ps->aliases = NULL;
  ps->alias_cloexec = NULL;
  ps->naliases = 0;
  ps->kind = 0; /* a late ps_hold finds no number of it */
  pthread_mutex_unlock(&ps->lock);
  pthread_mutex_lock(&pool_lock);
  ps->all_next = pool;
  pool = ps;
  pthread_mutex_unlock(&pool_lock);
}

bool ps_hold(struct psock *ps, int fd) {
  pthread_mutex_lock(&ps->lock);
  bool ok = ps->kind && fdt_get(fd) == ps && ps_has_alias(ps, fd);
  if (ok)
    ps->calls++;
  pthread_mutex_unlock(&ps->lock);
  return ok;
}


static int alias_index(const struct psock *ps, int fd) {
  for (int i = 0; i < ps->naliases; i++)
    if (ps->aliases[i] == fd)
      return i;
  return -1;
}

bool ps_has_alias(const struct psock *ps, int fd) { return alias_index(ps, fd) >= 0; }

bool ps_exec_hidden(const struct psock *ps) {
  /* An orphan's numbers name the parent's live socket until claimed. */
  return ps->kind == PS_SESSION || ps->kind == PS_CONNECTING || ps_orphan_session(ps);
}

int ps_program_aliases(const struct psock *ps) {
  return ps->naliases - (ps->own_fd >= 0 && ps_has_alias(ps, ps->own_fd));
}

bool ps_shared(const struct psock *ps) { return ps->kids > 0 || ps->relays > 0 || ps->calls > 0; }

bool ps_get_cloexec(const struct psock *ps, int fd) {
  int i = alias_index(ps, fd);
  return i >= 0 && ps->alias_cloexec[i];
}

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
  for (struct ereg *r = ps->regs, *next; r; r = next) {
    next = r->next;
    if (r->fd == fd)
      reg_unlink(ps, r);
  }
  if (ps->tab) { /* an epoll instance: tether's own calls use another number */
    pthread_mutex_lock(&ps->tab->lock);
    if (ps->tab->epfd == fd)
      ps->tab->epfd = ps->naliases ? ps->aliases[0] : -1;
    pthread_mutex_unlock(&ps->tab->lock);
  }
  return ps->naliases;
}

void ps_set_cloexec(struct psock *ps, int fd, bool cloexec) {
  int i = alias_index(ps, fd);
  if (i >= 0)
    ps->alias_cloexec[i] = cloexec;
}

/* ---- epoll registrations ---- */

static uint64_t token(const struct ereg *r) { return (uint64_t)r->check << 32 | r->slot; }

/* tab->lock held.  What the kernel is given for r: a disarmed one-shot
 * registration stays disarmed (only the implied EPOLLERR/EPOLLHUP can fire
 * it, and ep_translate drops that). */
static struct epoll_event kernel_event(const struct ereg *r) {
  struct epoll_event ev = {.events = r->disarmed ? EPOLLONESHOT : r->events, .data.u64 = token(r)};
  return ev;
}

int ep_track(struct psock *ep, int epfd) {
  struct eptab *t = calloc(1, sizeof(*t));
  if (!t)
    return -ENOMEM;
  pthread_mutex_init(&t->lock, NULL);
  t->epfd = epfd;
  t->shut_efd = -1;
  uint32_t seed = 0;
  if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
    seed = (uint32_t)(uintptr_t)t ^ (uint32_t)time(NULL);
  t->seq = seed;
  ep->tab = t;
  return 0;
}

/* tab->lock held.  A new registration with a slot and a check value. */
static struct ereg *slot_new(struct eptab *t) {
  struct ereg *r = calloc(1, sizeof(*r));
  if (!r)
    return NULL;
  if (t->nfree) {
    r->slot = t->free[--t->nfree];
  } else {
    if (t->nslots == t->cap) {
      uint32_t cap = t->cap ? t->cap * 2 : 16;
      struct ereg **sl = realloc(t->slots, (size_t)cap * sizeof(*sl));
      if (!sl) {
        free(r);
        return NULL;
      }
      t->slots = sl;
      uint32_t *fr = realloc(t->free, (size_t)cap * sizeof(*fr));
      if (!fr) {
        free(r);
        return NULL;
      }
      t->free = fr;
      t->cap = cap;
    }
    r->slot = t->nslots++;
  }
  /* Odd multiples of the golden ratio: consecutive values differ in many
   * bits, and none is 0 (no zeroed or small data looks like a token). */
  t->seq += 0x9e3779b9u;
  r->check = t->seq | 1u;
  t->slots[r->slot] = r;
  return r;
}

/* tab->lock held. */
static void slot_free(struct eptab *t, struct ereg *r) {
  if (r->slot < t->nslots && t->slots[r->slot] == r) {
    t->slots[r->slot] = NULL;
    t->free[t->nfree++] = r->slot;
  }
}

/* ps->lock held.  Takes r off ps's list and its instance's table. */
static void reg_unlink(struct psock *ps, struct ereg *r) {
  for (struct ereg **pp = &ps->regs; *pp; pp = &(*pp)->next)
    if (*pp == r) {
      *pp = r->next;
      break;
    }
  struct eptab *t = r->ep->tab;
  if (t) {
    pthread_mutex_lock(&t->lock);
    slot_free(t, r);
    pthread_mutex_unlock(&t->lock);
  }
  free(r);
}

static struct ereg *reg_find(const struct psock *ps, const struct psock *ep, int fd) {
  for (struct ereg *r = ps->regs; r; r = r->next)
    if (r->ep == ep && r->fd == fd)
      return r;
  return NULL;
}

/* ---- readiness made by the program's shutdown() ---- */

#define SHUT_TOKEN UINT64_MAX /* no registration's (ep_translate drops it) */

/* What a shutdown made ready of registration r (of a session's), as the
 * kernel reports a shut TCP socket. */
static uint32_t shut_events(const struct ereg *r) {
  struct psock *ps = fdt_get(r->fd);
  if (!ps || ps->kind != PS_SESSION)
    return 0;
  bool rd = __atomic_load_n(&ps->rd_shut, __ATOMIC_ACQUIRE);
  bool wr = __atomic_load_n(&ps->wr_shut, __ATOMIC_ACQUIRE);
  uint32_t e = 0;
  if (rd)
    e |= r->events & (EPOLLIN | EPOLLRDNORM | EPOLLRDHUP);
  if (wr)
    e |= r->events & (EPOLLOUT | EPOLLWRNORM);
  if (rd && wr)
    e |= EPOLLHUP; /* reported whether asked for or not */
  return e;
}

/* tab->lock held.  Registration r may be ready through a shutdown. */
static void shut_mark(struct eptab *t, struct ereg *r) {
  if (!shut_events(r))
    return;
  r->shut_told = false;
  __atomic_store_n(&t->shut_any, true, __ATOMIC_RELEASE);
  if (t->shut_efd < 0) {
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event k = {.events = EPOLLIN | EPOLLET, .data.u64 = SHUT_TOKEN};
    if (efd >= 0 && real.epoll_ctl(t->epfd, EPOLL_CTL_ADD, efd, &k) == 0)
      t->shut_efd = efd;
    else if (efd >= 0)
      real.close(efd);
  }
  uint64_t one = 1;
  if (t->shut_efd >= 0)
    (void)!real.write(t->shut_efd, &one, sizeof(one));
}

void ps_shut_notify(struct psock *ps) {
  for (struct ereg *r = ps->regs; r; r = r->next) {
    struct eptab *t = r->ep->tab;
    pthread_mutex_lock(&t->lock);
    shut_mark(t, r);
    pthread_mutex_unlock(&t->lock);
  }
}

bool ep_shut_pending(struct psock *ep) {
  return __atomic_load_n(&ep->tab->shut_any, __ATOMIC_ACQUIRE);
}

int ep_add_shut(struct psock *ep, struct epoll_event *evs, struct ep_hit *hits, int n, int max) {
  struct eptab *t = ep->tab;
  bool again = false; /* a registration stays ready for the next wait */
  pthread_mutex_lock(&t->lock);
  for (uint32_t s = 0; s < t->nslots; s++) {
    struct ereg *r = t->slots[s];
    uint32_t e = r && !r->disarmed && !r->shut_told ? shut_events(r) : 0;
    if (!e)
      continue;
    int i = 0;
    while (i < n && !(hits[i].slot == r->slot && hits[i].check == r->check))
      i++;
    if (i == n) {
      if (n == max) {
        again = true; /* no room now: the next wait */
        continue;
      }
      evs[n].events = 0;
      evs[n].data = r->data;
      hits[n] = (struct ep_hit){.fd = r->fd, .events = r->events, .slot = r->slot,
                                .check = r->check};
      n++;
      if (r->events & EPOLLONESHOT)
        r->disarmed = true;
    }
    evs[i].events |= e;
    if (r->events & EPOLLET)
      r->shut_told = true;
    else if (!(r->events & EPOLLONESHOT))
      again = true;
  }
  if (!again)
    __atomic_store_n(&t->shut_any, false, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&t->lock);
  return n;
}

int ep_ctl(struct psock *ep, struct psock *ps, int epfd, int op, int fd,
           const struct epoll_event *ev) {
  struct eptab *t = ep->tab;
  struct ereg *r = reg_find(ps, ep, fd);
  int rc = 0;
  if (op != EPOLL_CTL_DEL && !ev)
    return -EFAULT;
  pthread_mutex_lock(&t->lock);
  switch (op) {
  case EPOLL_CTL_ADD: {
    struct ereg *n = slot_new(t);
    if (!n) {
      rc = -ENOMEM;
      break;
    }
    n->ep = ep;
    n->fd = fd;
    n->events = ev->events;
    n->data = ev->data;
    struct epoll_event k = kernel_event(n);
    /* A listener's number is an epoll instance (listen.c), which the kernel
     * refuses EPOLLEXCLUSIVE for: every waiter wakes instead, and those
     * that find nothing get EAGAIN from accept(), as prefork servers
     * expect of a shared listener anyway. */
    if (ps->kind == PS_LISTEN || (ps->kind == PS_ORPHAN && ps->pl))
      k.events &= ~(uint32_t)EPOLLEXCLUSIVE;
    if (real.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &k) < 0) {
      rc = -errno;
      slot_free(t, n);
      free(n);
      break;
    }
    if (r) { /* an earlier file under this number, closed behind our back */
      pthread_mutex_unlock(&t->lock);
      reg_unlink(ps, r);
      pthread_mutex_lock(&t->lock);
    }
    n->next = ps->regs;
    ps->regs = n;
    shut_mark(t, n); /* a session shut down before it was registered */
    break;
  }
  case EPOLL_CTL_MOD: {
    struct epoll_event k;
    if (!r) { /* not a registration of ours: the kernel says what it is */
      k = *ev;
      rc = real.epoll_ctl(epfd, op, fd, &k) < 0 ? -errno : 0;
      break;
    }
    struct ereg want = *r;
    want.events = ev->events;
    want.disarmed = false;
    k = kernel_event(&want);
    if (real.epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &k) < 0) {
      rc = -errno;
      break;
    }
    r->events = ev->events;
    r->data = ev->data;
    r->disarmed = false;
    shut_mark(t, r); /* re-armed: ready again if shut down */
    break;
  }
  case EPOLL_CTL_DEL: {
    struct epoll_event dummy = {0}; /* kernels before 2.6.9 wanted one */
    rc = real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &dummy) < 0 ? -errno : 0;
    if (r && (rc == 0 || rc == -ENOENT)) {
      pthread_mutex_unlock(&t->lock);
      reg_unlink(ps, r);
      pthread_mutex_lock(&t->lock);
    }
    break;
  }
  default:
    rc = -EINVAL;
  }
  pthread_mutex_unlock(&t->lock);
  return rc;
}

int ep_translate(struct psock *ep, struct epoll_event *evs, int n, struct ep_hit *hits) {
  struct eptab *t = ep->tab;
  int out = 0;
  pthread_mutex_lock(&t->lock);
  for (int i = 0; i < n; i++) {
    uint64_t tok = evs[i].data.u64;
    uint32_t slot = (uint32_t)tok;
    struct ereg *r = slot < t->nslots ? t->slots[slot] : NULL;
    if (!r || r->check != (uint32_t)(tok >> 32) || r->disarmed)
      continue; /* gone meanwhile, or a disarmed one-shot's EPOLLHUP */
    if (r->events & EPOLLONESHOT)
      r->disarmed = true;
    hits[out].fd = r->fd;
    hits[out].events = r->events;
    hits[out].slot = r->slot;
    hits[out].check = r->check;
    evs[out].events = evs[i].events;
    evs[out].data = r->data;
    out++;
  }
  pthread_mutex_unlock(&t->lock);
  return out;
}

void ep_unfire(struct psock *ep, const struct ep_hit *hit) {
  struct eptab *t = ep->tab;
  if (!(hit->events & EPOLLONESHOT))
    return;
  pthread_mutex_lock(&t->lock);
  struct ereg *r = hit->slot < t->nslots ? t->slots[hit->slot] : NULL;
  if (r && r->check == hit->check && r->disarmed) {
    r->disarmed = false;
    struct epoll_event k = kernel_event(r);
    /* ENOENT: a swap is between its delete and its add, and adds it armed. */
    (void)real.epoll_ctl(t->epfd, EPOLL_CTL_MOD, r->fd, &k);
  }
  pthread_mutex_unlock(&t->lock);
}

void ps_close_regs(struct psock *ps, int fd) {
  for (struct ereg *r = ps->regs, *next; r; r = next) {
    next = r->next;
    if (r->fd != fd)
      continue;
    struct eptab *t = r->ep->tab;
    pthread_mutex_lock(&t->lock);
    struct epoll_event dummy = {0};
    (void)real.epoll_ctl(t->epfd, EPOLL_CTL_DEL, fd, &dummy);
    pthread_mutex_unlock(&t->lock);
    reg_unlink(ps, r);
  }
}

int ps_nregs(struct psock *ps) {
  int n = 0;
  for (struct ereg *r = ps->regs; r; r = r->next)
    n++;
  return n;
}

void ps_swap(struct psock *ps, int file) {
  for (struct ereg *r = ps->regs; r; r = r->next) {
    struct eptab *t = r->ep->tab;
    struct epoll_event dummy = {0};
    pthread_mutex_lock(&t->lock);
    (void)real.epoll_ctl(t->epfd, EPOLL_CTL_DEL, r->fd, &dummy);
    pthread_mutex_unlock(&t->lock);
  }
  bool hide = ps_exec_hidden(ps);
  for (int i = 0; i < ps->naliases; i++)
    if (ps->aliases[i] != file)
      (void)real.dup3(file, ps->aliases[i], hide || ps->alias_cloexec[i] ? O_CLOEXEC : 0);
  for (struct ereg *r = ps->regs; r; r = r->next) {
    struct eptab *t = r->ep->tab;
    pthread_mutex_lock(&t->lock);
    struct epoll_event k = kernel_event(r);
    (void)real.epoll_ctl(t->epfd, EPOLL_CTL_ADD, r->fd, &k);
    pthread_mutex_unlock(&t->lock);
  }
}

static void forget_in(struct psock *ps, void *arg) {
  struct psock *ep = arg;
  pthread_mutex_lock(&ps->lock);
  for (struct ereg *r = ps->regs, *next; r; r = next) {
    next = r->next;
    if (r->ep == ep)
      reg_unlink(ps, r);
  }
  pthread_mutex_unlock(&ps->lock);
}

static void tab_free(struct eptab *t) {
  if (!t)
    return;
  if (t->shut_efd >= 0)
    real.close(t->shut_efd);
  pthread_mutex_destroy(&t->lock);
  free(t->slots);
  free(t->free);
  free(t);
}

void ep_forget(struct psock *ep) {
  if (!ep->tab)
    return;
  fdt_each(forget_in, ep);
  tab_free(ep->tab);
  ep->tab = NULL;
}

void fdt_each(void (*fn)(struct psock *ps, void *arg), void *arg) {
  pthread_mutex_lock(&g_lock);
  for (struct psock *ps = g_all; ps; ps = ps->all_next)
    fn(ps, arg);
  pthread_mutex_unlock(&g_lock);
}

bool fdt_try_each(void (*fn)(struct psock *ps, void *arg), void *arg) {
  if (pthread_mutex_trylock(&g_lock) != 0)
    return false;
  for (struct psock *ps = g_all; ps; ps = ps->all_next)
    fn(ps, arg);
  pthread_mutex_unlock(&g_lock);
  return true;
}

void fdt_after_fork_child(void) {
  for (struct psock *ps = pool; ps; ps = ps->all_next)
    pthread_mutex_init(&ps->lock, NULL);
  for (struct psock *ps = g_all; ps; ps = ps->all_next) {
    pthread_mutex_init(&ps->lock, NULL);
    if (ps->tab)
      pthread_mutex_init(&ps->tab->lock, NULL);
    if (ps->kind == PS_SESSION || ps->kind == PS_CONNECTING || ps->kind == PS_LISTEN)
      ps->kind = PS_ORPHAN;
    ps->s = NULL; /* the parent's; a listener keeps pl for plain accepts */
    ps->kids = ps->relays = ps->calls = 0; /* the parent's other threads' */
    if (ps->kind == PS_RELAY) /* our parent's relay: a plain shared socket here */
      ps->serial = 0;
    if (ps->own_fd >= 0) { /* the parent's own number: not the program's */
      int own = ps->own_fd;
      ps->own_fd = -1;
      (void)ps_remove_alias(ps, own);
      (void)real.close(own);
    }
    if (ps_orphan_session(ps)) /* the kernel's are the parent's: forget ours */
      while (ps->regs)
        reg_unlink(ps, ps->regs);
  }
}
