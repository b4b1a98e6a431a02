/*
 * tether-snapshot — look inside a snapshot file (tether_snapshot_save).
 *
 *   tether-snapshot inspect FILE [--json]
 *
 * The file is checked and decoded by the library's own decoder (snap_open,
 * lib/wire/snapshot.h: magic, version, length, SHA-256, then every field),
 * so this tool links the library's internal wire objects, not just the
 * public API.  What it decoded is printed by walking the protobuf-c message
 * through its descriptors: a field added to proto/snapshot.proto shows up
 * here, under its own name, without a change to this file.
 *
 * Three naming conventions of snapshot.proto decide how a bytes field is
 * shown:
 *   k_*        key material: never shown, only its length
 *   retained   the application's bytes: never shown, only their length
 *   sockaddr   a struct sockaddr_in/sockaddr_in6: shown as HOST:PORT
 * Any other bytes field is shown in hex, or only its length past
 * HEX_MAX bytes.  A uint64 field whose name ends in "_unix_ms" also gets its
 * date (UTC) in the text form.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <tether/tether.h>

#include "cli.h"
#include "wire/crypto.h"
#include "wire/snapshot.h"

#define PROG "tether-snapshot"
#define HEX_MAX 64 /* longer bytes fields are shown as their length */
#define FILE_MAX (SNAP_HEADER_LEN + SNAP_PAYLOAD_MAX + SNAP_TRAILER_LEN)

/* Exit statuses beyond cli.h's 0 (ok), 1 (other failure), 2 (usage). */
enum {
  EXIT_UNREADABLE = 3, /* FILE cannot be opened or read */
  EXIT_DAMAGED = 4,    /* empty, foreign, truncated, corrupt, inconsistent */
  EXIT_VERSION = 5,    /* a snapshot of another format version */
};

static void usage(FILE *f) {
  fputs("usage: " PROG " inspect FILE [--json]\n"
        "\n"
        "  inspect      check a snapshot file and print what it holds (keys\n"
        "               redacted, retained bytes counted, not shown);\n"
        "               FILE - reads standard input\n"
        "\n"
        "  -j, --json     print one JSON object instead of text\n"
        "  -V, --version  print the library version\n"
        "  -h, --help     print this help\n"
        "\n"
        "Exit status: 0 ok, 1 other failure, 2 usage, 3 unreadable file,\n"
        "4 damaged or not a snapshot, 5 unsupported format version.\n"
        "See tether-snapshot(1).\n",
        f);
}

/* ---- reading ------------------------------------------------------------- */

/* Reads all of fd (at most FILE_MAX bytes) into a malloc'd buffer.
 * 0, -errno, or -EFBIG when there is more. */
static int read_all(int fd, uint8_t **out, size_t *out_len) {
  struct stat st;
  size_t cap = 64 * 1024, len = 0;
  uint8_t *buf;

  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
    cap = (size_t)st.st_size + 1; /* + 1: sees EOF without growing */
  if (cap > FILE_MAX + 1)
    return -EFBIG;
  buf = malloc(cap);
  if (buf == NULL)
    return -ENOMEM;
  for (;;) {
    if (len == cap) {
      size_t ncap = cap * 2 > FILE_MAX + 1 ? FILE_MAX + 1 : cap * 2;
      uint8_t *nbuf = ncap > cap ? realloc(buf, ncap) : NULL;
      if (nbuf == NULL) {
        free(buf);
        return ncap > cap ? -ENOMEM : -EFBIG;
      }
      buf = nbuf;
      cap = ncap;
    }
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int err = -errno;
      free(buf);
      return err;
    }
    if (n == 0)
      break;
    len += (size_t)n;
  }
  *out = buf;
  *out_len = len;
  return 0;
}

static uint32_t get_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

/* Reads and decodes path ("-": stdin), called name in messages.  0, or an
 * exit status after one line on stderr.  *buf holds the file. */
static int load(const char *path, const char *name, uint8_t **buf, size_t *len,
                snap_msg **out) {
  const char *why = NULL;
  bool is_stdin = strcmp(path, "-") == 0;
  int fd = STDIN_FILENO, r, err;

  if (!is_stdin) {
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      fprintf(stderr, PROG ": %s: cannot open: %s\n", name, strerror(errno));
      return EXIT_UNREADABLE;
    }
  }
  r = read_all(fd, buf, len);
  if (!is_stdin)
    close(fd);
  if (r == -EFBIG) {
    fprintf(stderr, PROG ": %s: too large to be a tether snapshot\n", name);
    return EXIT_DAMAGED;
  }
  if (r < 0) {
    fprintf(stderr, PROG ": %s: cannot read: %s\n", name, strerror(-r));
    return r == -ENOMEM ? CLI_EXIT_FAIL : EXIT_UNREADABLE;
  }
  if (*len == 0) {
    fprintf(stderr, PROG ": %s: empty file, not a tether snapshot\n", name);
    return EXIT_DAMAGED;
  }
  *out = snap_open(*buf, *len, &err, &why);
  if (*out != NULL)
    return CLI_EXIT_OK;
  if (err == TETHER_EVERSION) {
    /* snap_open has read this far: the header is whole. */
    fprintf(stderr,
            PROG ": %s: unsupported snapshot format version %" PRIu32
                 " (this tool reads version %d)\n",
            name, get_be32(*buf + 8), SNAP_FORMAT_VERSION);
    return EXIT_VERSION;
  }
  size_t magic = strlen(SNAP_MAGIC);
  if (memcmp(*buf, SNAP_MAGIC, *len < magic ? *len : magic) != 0)
    fprintf(stderr, PROG ": %s: %s\n", name, why); /* "not a tether snapshot" */
  else if (*len < magic)
    fprintf(stderr, PROG ": %s: damaged snapshot: truncated header\n", name);
  else
    fprintf(stderr, PROG ": %s: damaged snapshot: %s\n", name, why);
  return EXIT_DAMAGED;
}

/* ---- the generic walk ---------------------------------------------------- */

struct printer {
  FILE *f;
  bool json;
};

static const void *member(const ProtobufCMessage *m, unsigned offset) {
  return (const char *)m + offset;
}

/* Whether a singular field holds a value.  proto3 scalars always do; the
 * other cases are there for fields snapshot.proto may grow. */
static bool present(const ProtobufCMessage *m,
                    const ProtobufCFieldDescriptor *f) {
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    return *(const uint32_t *)member(m, f->quantifier_offset) == f->id;
  if (f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING)
    return *(const void *const *)member(m, f->offset) != NULL;
  if (f->label == PROTOBUF_C_LABEL_OPTIONAL) /* a has_ flag */
    return *(const protobuf_c_boolean *)member(m, f->quantifier_offset);
  return true;
}

/* Element k of repeated field f, whose elements are step bytes. */
static const void *element(const ProtobufCMessage *m,
                           const ProtobufCFieldDescriptor *f, size_t k,
                           size_t step) {
  return *(const char *const *)member(m, f->offset) + k * step;
}

/* Size of one element of a repeated field of type t. */
static size_t elem_size(ProtobufCType t) {
  switch (t) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_ENUM:
    return 4;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    return 8;
  case PROTOBUF_C_TYPE_FLOAT:
    return sizeof(float);
  case PROTOBUF_C_TYPE_DOUBLE:
    return sizeof(double);
  case PROTOBUF_C_TYPE_BOOL:
    return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_STRING:
    return sizeof(char *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_MESSAGE:
    return sizeof(ProtobufCMessage *);
  }
  return 0;
}

static bool starts_with(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A struct sockaddr as HOST:PORT ([HOST]:PORT for IPv6) in buf; false when
 * b is not one. */
static bool format_sockaddr(const ProtobufCBinaryData *b, char *buf,
                            size_t len) {
  char host[NI_MAXHOST], port[NI_MAXSERV];
  struct sockaddr_storage ss; /* b->data need not be aligned for it */
  const struct sockaddr *sa = (const struct sockaddr *)&ss;

  if (b->len != sizeof(struct sockaddr_in) &&
      b->len != sizeof(struct sockaddr_in6))
    return false;
  memcpy(&ss, b->data, b->len);
  if (sa->sa_family !=
      (b->len == sizeof(struct sockaddr_in) ? AF_INET : AF_INET6))
    return false;
  if (getnameinfo(sa, (socklen_t)b->len, host, sizeof(host), port, sizeof(port),
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return false;
  snprintf(buf, len, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host,
           port);
  return true;
}

static void put_hex(FILE *f, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    fprintf(f, "%02x", p[i]);
}

static void put_bytes(const struct printer *pr,
                      const ProtobufCFieldDescriptor *fd,
                      const ProtobufCBinaryData *b) {
  char addr[NI_MAXHOST + NI_MAXSERV + 4];

  if (starts_with(fd->name, "k_")) {
    if (pr->json)
      fprintf(pr->f, "{\"redacted\":true,\"length\":%zu}", b->len);
    else
      fprintf(pr->f, "<redacted %zu bytes>", b->len);
  } else if (strcmp(fd->name, "retained") == 0 || b->len > HEX_MAX) {
    if (pr->json)
      fprintf(pr->f, "{\"length\":%zu}", b->len);
    else
      fprintf(pr->f, "<%zu bytes, not shown>", b->len);
  } else if (strcmp(fd->name, "sockaddr") == 0 &&
             format_sockaddr(b, addr, sizeof(addr))) {
    if (pr->json)
      cli_json_str(pr->f, addr);
    else
      fputs(addr, pr->f);
  } else if (pr->json) {
    fputc('"', pr->f);
    put_hex(pr->f, b->data, b->len);
    fputc('"', pr->f);
  } else if (b->len == 0) {
    fputs("(empty)", pr->f);
  } else {
    put_hex(pr->f, b->data, b->len);
  }
}

/* " (2026-11-21 12:59:42.123 UTC)" for milliseconds since the epoch. */
static void put_date(FILE *f, uint64_t ms) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  char s[64];

  if (ms == 0 || gmtime_r(&t, &tm) == NULL ||
      strftime(s, sizeof(s), "%Y-%m-%d %H:%M:%S", &tm) == 0)
    return;
  fprintf(f, " (%s.%03u UTC)", s, (unsigned)(ms % 1000));
}

/* One value that is not a message. */
static void put_scalar(const struct printer *pr,
                       const ProtobufCFieldDescriptor *fd, const void *v) {
  FILE *f = pr->f;

  switch (fd->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
    fprintf(f, "%" PRId32, *(const int32_t *)v);
    break;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    fprintf(f, "%" PRIu32, *(const uint32_t *)v);
    break;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
    fprintf(f, "%" PRId64, *(const int64_t *)v);
    break;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    fprintf(f, "%" PRIu64, *(const uint64_t *)v);
    if (!pr->json && ends_with(fd->name, "_unix_ms"))
      put_date(f, *(const uint64_t *)v);
    break;
  case PROTOBUF_C_TYPE_FLOAT:
    cli_json_double(f, *(const float *)v);
    break;
  case PROTOBUF_C_TYPE_DOUBLE:
    cli_json_double(f, *(const double *)v);
    break;
  case PROTOBUF_C_TYPE_BOOL:
    fputs(*(const protobuf_c_boolean *)v ? "true" : "false", f);
    break;
  case PROTOBUF_C_TYPE_ENUM: {
    int32_t e = *(const int32_t *)v;
    const ProtobufCEnumValue *ev =
        protobuf_c_enum_descriptor_get_value(fd->descriptor, e);
    if (ev != NULL && pr->json)
      cli_json_str(f, ev->name);
    else if (ev != NULL)
      fputs(ev->name, f);
    else
      fprintf(f, "%" PRId32, e);
    break;
  }
  case PROTOBUF_C_TYPE_STRING:
    cli_json_str(f, *(const char *const *)v); /* quoted in text too */
    break;
  case PROTOBUF_C_TYPE_BYTES:
    put_bytes(pr, fd, v);
    break;
  case PROTOBUF_C_TYPE_MESSAGE:
    break; /* not a scalar: see put_message */
  }
}

/* ---- JSON: one object per message, keys are the .proto field names ------- */

static void json_message(const struct printer *pr, const ProtobufCMessage *m);

static void json_value(const struct printer *pr,
                       const ProtobufCFieldDescriptor *fd, const void *v) {
  if (fd->type == PROTOBUF_C_TYPE_MESSAGE)
    json_message(pr, *(const ProtobufCMessage *const *)v);
  else
    put_scalar(pr, fd, v);
}

static void json_message(const struct printer *pr, const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;

  fputc('{', pr->f);
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    fprintf(pr->f, "%s\"%s\":", i ? "," : "", fd->name);
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)member(m, fd->quantifier_offset);
      fputc('[', pr->f);
      for (size_t k = 0; k < n; k++) {
        fputs(k ? "," : "", pr->f);
        json_value(pr, fd, element(m, fd, k, elem_size(fd->type)));
      }
      fputc(']', pr->f);
    } else if (present(m, fd)) {
      json_value(pr, fd, member(m, fd->offset));
    } else {
      fputs("null", pr->f);
    }
  }
  fputc('}', pr->f);
}

/* ---- text: one "name  value" line per field, nested messages indented ---- */

static void text_message(const struct printer *pr, const ProtobufCMessage *m,
                         int indent, int width);

/* The widest field name of d, at least min. */
static int name_width(const ProtobufCMessageDescriptor *d, int min) {
  int w = min;
  for (unsigned i = 0; i < d->n_fields; i++) {
    int n = (int)strlen(d->fields[i].name);
    w = n > w ? n : w;
  }
  return w;
}

/* A message with a single non-message field (like Address) fits on its
 * parent's line. */
static bool inline_message(const ProtobufCMessageDescriptor *d) {
  return d->n_fields == 1 && d->fields[0].type != PROTOBUF_C_TYPE_MESSAGE &&
         d->fields[0].label != PROTOBUF_C_LABEL_REPEATED;
}

/* A message after its label (printed by the caller, and then lead, the
 * padding to its value column): inline, or on the following lines. */
static void text_sub(const struct printer *pr, const ProtobufCMessage *m,
                     int lead, int indent) {
  const ProtobufCMessageDescriptor *d = m->descriptor;

  if (inline_message(d) && present(m, &d->fields[0])) {
    fprintf(pr->f, "%*s", lead, "");
    put_scalar(pr, &d->fields[0], member(m, d->fields[0].offset));
    fputc('\n', pr->f);
    return;
  }
  fputc('\n', pr->f);
  text_message(pr, m, indent, name_width(d, 0));
}

static void text_field(const struct printer *pr, const ProtobufCMessage *m,
                       const ProtobufCFieldDescriptor *fd, int indent,
                       int width) {
  FILE *f = pr->f;
  int lead = width - (int)strlen(fd->name) + 2; /* to the value column */

  fprintf(f, "%*s%s", indent, "", fd->name);
  if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
    size_t n = *(const size_t *)member(m, fd->quantifier_offset);
    size_t step = elem_size(fd->type);
    if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
      fprintf(f, "%*s%zu\n", lead, "", n);
      for (size_t k = 0; k < n; k++) {
        fprintf(f, "%*s[%zu]", indent + 2, "", k);
        text_sub(pr, *(const ProtobufCMessage *const *)element(m, fd, k, step),
                 1, indent + 4);
      }
      return;
    }
    fprintf(f, "%*s[", lead, "");
    for (size_t k = 0; k < n; k++) {
      fputs(k ? ", " : "", f);
      put_scalar(pr, fd, element(m, fd, k, step));
    }
    fputs("]\n", f);
  } else if (!present(m, fd)) {
    fprintf(f, "%*s(none)\n", lead, "");
  } else if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
    text_sub(pr, *(const ProtobufCMessage *const *)member(m, fd->offset), lead,
             indent + 2);
  } else {
    fprintf(f, "%*s", lead, "");
    put_scalar(pr, fd, member(m, fd->offset));
    fputc('\n', f);
  }
}

static void text_message(const struct printer *pr, const ProtobufCMessage *m,
                         int indent, int width) {
  const ProtobufCMessageDescriptor *d = m->descriptor;

  for (unsigned i = 0; i < d->n_fields; i++)
    text_field(pr, m, &d->fields[i], indent, width);
}

/* ---- inspect ------------------------------------------------------------- */

static int inspect(const char *path, bool json) {
  struct printer pr = {.f = stdout, .json = json};
  uint8_t *buf = NULL;
  size_t len = 0;
  snap_msg *m = NULL;
  const char *name = strcmp(path, "-") == 0 ? "standard input" : path;
  int rc = load(path, name, &buf, &len, &m);

  if (rc != CLI_EXIT_OK)
    goto out;
  /* snap_open accepted the frame: its figures follow from the length. */
  uint64_t payload = len - SNAP_HEADER_LEN - SNAP_TRAILER_LEN;
  const uint8_t *digest = buf + len - SNAP_TRAILER_LEN;
  if (json) {
    fputs("{\"file\":", stdout);
    cli_json_str(stdout, name);
    printf(",\"file_length\":%zu,\"format_version\":%d,"
           "\"payload_length\":%" PRIu64 ",\"checksum_ok\":true,\"sha256\":\"",
           len, SNAP_FORMAT_VERSION, payload);
    put_hex(stdout, digest, SNAP_TRAILER_LEN);
    fputs("\",\"snapshot\":", stdout);
    json_message(&pr, &m->base);
    fputs("}\n", stdout);
  } else {
    int w = name_width(m->base.descriptor, (int)strlen("format version"));
    printf("%-*s  %s\n", w, "file", name);
    printf("%-*s  %zu bytes\n", w, "file length", len);
    printf("%-*s  %d\n", w, "format version", SNAP_FORMAT_VERSION);
    printf("%-*s  %" PRIu64 " bytes\n", w, "payload", payload);
    printf("%-*s  SHA-256 ok, ", w, "checksum");
    put_hex(stdout, digest, SNAP_TRAILER_LEN);
    putchar('\n');
    text_message(&pr, &m->base, 0, w);
  }
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, PROG ": cannot write the output: %s\n", strerror(errno));
    rc = CLI_EXIT_FAIL;
  }
out:
  snap_free(m);
  if (buf != NULL)
    wipe(buf, len); /* it holds session keys */
  free(buf);
  return rc;
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"json", no_argument, NULL, 'j'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  bool json = false;
  int c;

  int first = cli_command_arg(argc, argv, PROG, usage, "missing command: inspect");
  if (first >= 0)
    return first;
  if (strcmp(argv[1], "inspect") != 0)
    return cli_usage_error(PROG, "unknown command '%s' (expected inspect)",
                           argv[1]);

  /* Options follow the command (see tether-echo.c). */
  argc--;
  argv++;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":jVh", opts, NULL)) != -1) {
    switch (c) {
    case 'j':
      json = true;
      break;
    case 'V':
      printf(PROG " %s\n", tether_version());
      return CLI_EXIT_OK;
    case 'h':
      usage(stdout);
      return CLI_EXIT_OK;
    default:
      return cli_getopt_error(PROG, c, argv);
    }
  }
  if (optind == argc)
    return cli_usage_error(PROG, "inspect: missing FILE");
  if (optind + 1 < argc)
    return cli_usage_error(PROG, "unexpected argument '%s'", argv[optind + 1]);
  return inspect(argv[optind], json);
}
