/* The C API against a real akidbd, as a C programmer uses it.
 *
 * Usage: test_c SOCKET VECTORS_OUT
 * Embeds the texts below and writes their vectors (count x dim little-endian f32) to VECTORS_OUT, where the Rust
 * side (tests/it/cclient.rs) compares them bit for bit with the Rust client's. Checks error codes and messages, the
 * caller-owned and library-owned buffers, and a socket with nothing listening. Prints "c: N passed, M failed". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "akidb_client.h"

static int passed = 0;
static int failed = 0;

#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (cond) {                                           \
      passed++;                                           \
    } else {                                              \
      failed++;                                           \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                       \
      fprintf(stderr, " (last error: %s)\n", akidb_last_error_message()); \
    }                                                     \
  } while (0)

static const char *const TEXTS[] = {
    "The robot picks up the red cup from the table.",
    "Where is the charging station?",
    "",
    "Ünïcödé tëxt with emoji \xF0\x9F\xA4\x96 and CJK \xE6\x9C\xBA\xE5\x99\xA8\xE4\xBA\xBA.",
};
#define N_TEXTS (sizeof(TEXTS) / sizeof(TEXTS[0]))

static void check_no_daemon(void) {
  akidb_client *client = (akidb_client *)0x1;
  akidb_status status = akidb_connect("/nonexistent-akidb-dir/embed.sock", &client);
  CHECK(status == AKIDB_CONNECT_FAILED, "connect to nothing: %s", akidb_status_name(status));
  CHECK(strstr(akidb_last_error_message(), "nonexistent-akidb-dir") != NULL, "message names the path: %s",
        akidb_last_error_message());
  CHECK(client == (akidb_client *)0x1, "*out untouched on failure");
  CHECK(akidb_connect("/tmp/x.sock", NULL) == AKIDB_INVALID_ARGUMENT, "NULL out");
}

static void check_errors(akidb_client *client) {
  float buffer[384];
  size_t dim = 0;
  akidb_embed_options options = akidb_embed_options_default();
  const char *one[] = {"hello"};

  options.model = "no-such-model";
  akidb_status status = akidb_embed(client, one, 1, &options, buffer, 384, &dim);
  CHECK(status == AKIDB_UNKNOWN_MODEL, "unknown model: %s", akidb_status_name(status));
  CHECK(strcmp(akidb_status_name(status), "unknown_model") == 0, "status name");
  CHECK(strstr(akidb_last_error_message(), "no-such-model") != NULL, "message: %s", akidb_last_error_message());

  status = akidb_embed(client, NULL, 0, NULL, buffer, 384, &dim);
  CHECK(status == AKIDB_INVALID_REQUEST, "empty input: %s", akidb_status_name(status));

  /* Over the model's 256 tokens, with truncation off. */
  size_t long_len = 600 * 6;
  char *long_text = malloc(long_len + 1);
  for (size_t i = 0; i < 600; i++) memcpy(long_text + i * 6, "robot ", 6);
  long_text[long_len] = '\0';
  const char *too_long[] = {"short", long_text};
  options = akidb_embed_options_default();
  options.truncate = 0;
  status = akidb_embed(client, too_long, 2, &options, buffer, 384, &dim);
  CHECK(status == AKIDB_INPUT_TOO_LONG, "too long: %s", akidb_status_name(status));
  CHECK(strstr(akidb_last_error_message(), "input 1") != NULL, "message names the input: %s", akidb_last_error_message());
  options.truncate = 1;
  float two[2 * 384];
  status = akidb_embed(client, too_long, 2, &options, two, 2 * 384, &dim);
  CHECK(status == AKIDB_OK, "truncated: %s", akidb_status_name(status));
  free(long_text);

  options = akidb_embed_options_default();
  options.priority = 7;
  CHECK(akidb_embed(client, one, 1, &options, buffer, 384, &dim) == AKIDB_INVALID_ARGUMENT, "bad priority");
  options = akidb_embed_options_default();
  options.normalize = 2;
  CHECK(akidb_embed(client, one, 1, &options, buffer, 384, &dim) == AKIDB_INVALID_ARGUMENT, "bad tristate");
  const char *with_null[] = {"a", NULL};
  CHECK(akidb_embed(client, with_null, 2, NULL, buffer, 384, &dim) == AKIDB_INVALID_ARGUMENT, "NULL text");
  const char *not_utf8[] = {"\xff\xfe"};
  CHECK(akidb_embed(client, not_utf8, 1, NULL, buffer, 384, &dim) == AKIDB_INVALID_ARGUMENT, "not UTF-8");
  CHECK(akidb_embed(NULL, one, 1, NULL, buffer, 384, &dim) == AKIDB_INVALID_ARGUMENT, "NULL client");

  /* A buffer one float short: the dim is reported, the buffer untouched. */
  float small[383];
  small[0] = 42.0f;
  dim = 0;
  status = akidb_embed(client, one, 1, NULL, small, 383, &dim);
  CHECK(status == AKIDB_BUFFER_TOO_SMALL, "small buffer: %s", akidb_status_name(status));
  CHECK(dim == 384 && small[0] == 42.0f, "dim %zu reported, buffer untouched", dim);

  CHECK(strcmp(akidb_status_name(12345), "unknown_status") == 0, "unknown status name");
  CHECK(strcmp(akidb_status_name(AKIDB_CONNECT_FAILED), "connect_failed") == 0, "client code name");
}

static void check_options(akidb_client *client) {
  akidb_embed_options options = akidb_embed_options_default();
  const char *one[] = {"a short sentence"};
  float buffer[384];
  size_t dim = 0;
  options.dimensions = 64;
  options.priority = AKIDB_PRIORITY_REALTIME;
  options.deadline_ms = 30000;
  options.cache = 0;
  akidb_status status = akidb_embed(client, one, 1, &options, buffer, 384, &dim);
  CHECK(status == AKIDB_OK && dim == 64, "dimensions 64: %s dim %zu", akidb_status_name(status), dim);
  double norm = 0;
  for (size_t i = 0; i < dim; i++) norm += (double)buffer[i] * buffer[i];
  CHECK(fabs(norm - 1.0) < 1e-3, "normalized after the cut: %f", norm);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s SOCKET VECTORS_OUT\n", argv[0]);
    return 2;
  }
  check_no_daemon();

  akidb_client *client = NULL;
  akidb_status status = akidb_connect(argv[1], &client);
  CHECK(status == AKIDB_OK && client != NULL, "connect: %s", akidb_status_name(status));
  if (client == NULL) return 1;

  akidb_health_state health = AKIDB_HEALTH_UNKNOWN;
  CHECK(akidb_health(client, &health) == AKIDB_OK && health == AKIDB_HEALTH_READY, "health %d", (int)health);

  akidb_server_info info;
  CHECK(akidb_info(client, &info) == AKIDB_OK, "info");
  CHECK(info.dim == 384 && info.model != NULL && strlen(info.model) > 0, "info: %s dim %u", info.model, info.dim);
  CHECK(info.version != NULL && info.max_inputs > 0 && info.max_tokens > 0, "info limits");
  akidb_info_free(&info);
  CHECK(info.model == NULL && info.version == NULL, "info_free clears");
  akidb_info_free(&info);
  akidb_info_free(NULL);

  /* The caller's buffer. */
  size_t dim = 0;
  float *vectors = malloc(N_TEXTS * 384 * sizeof(float));
  status = akidb_embed(client, TEXTS, N_TEXTS, NULL, vectors, N_TEXTS * 384, &dim);
  CHECK(status == AKIDB_OK && dim == 384, "embed: %s dim %zu", akidb_status_name(status), dim);

  /* The library's buffer: the same vectors. */
  float *owned = NULL;
  size_t count = 0, owned_dim = 0;
  status = akidb_embed_alloc(client, TEXTS, N_TEXTS, NULL, &owned, &count, &owned_dim);
  CHECK(status == AKIDB_OK && count == N_TEXTS && owned_dim == 384, "embed_alloc: %s", akidb_status_name(status));
  CHECK(owned != NULL && memcmp(owned, vectors, N_TEXTS * 384 * sizeof(float)) == 0, "alloc == buffer");
  akidb_floats_free(owned);
  akidb_floats_free(NULL);
  status = akidb_embed_alloc(client, NULL, 0, NULL, &owned, &count, &owned_dim);
  CHECK(status == AKIDB_INVALID_REQUEST && owned == NULL, "embed_alloc failure leaves NULL");

  FILE *out = fopen(argv[2], "wb");
  CHECK(out != NULL && fwrite(vectors, sizeof(float), N_TEXTS * 384, out) == N_TEXTS * 384, "write vectors");
  if (out) fclose(out);
  free(vectors);

  check_errors(client);
  check_options(client);
  /* Still usable after all those errors. */
  CHECK(akidb_health(client, &health) == AKIDB_OK && health == AKIDB_HEALTH_READY, "health after errors");
  CHECK(akidb_set_timeout_ms(client, 5000) == AKIDB_OK, "set timeout");
  CHECK(akidb_set_timeout_ms(NULL, 5000) == AKIDB_INVALID_ARGUMENT, "set timeout NULL");
  akidb_close(client);
  akidb_close(NULL);
  CHECK(strlen(akidb_client_version()) > 0, "version");

  printf("c: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
