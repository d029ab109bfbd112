// akidb_client.hpp: a header-only C++17 wrapper over the C API in akidb_client.h (link libakidb_client).
//
//   akidb::Client client;                               // the daemon's default socket; or Client("/path.sock")
//   std::vector<float> v = client.embed("pick up the red cup");
//   akidb::EmbedOptions o; o.prompt_name = "query"; o.dimensions = 128;
//   std::vector<std::vector<float>> vs = client.embed(std::vector<std::string>{"a", "b"}, o);
//
// Errors are exceptions: every failure throws akidb::Error, which carries the akidb_status code (code()) and its
// name (code_name(), the protocol's wire name such as "unknown_model"). Exceptions because a failed embed has no
// useful value to return, because std::vector results already allocate (so no "no exceptions" code path is
// spared), and because RAII then closes the connection on every path; code that must not throw can call the C API
// directly. The option names are the Python client's (tools/python/akidb_client): model, prompt_name, dimensions,
// priority, deadline_ms, normalize, truncate, cache.
//
// Threads: one Client may be used from several threads (calls are serialized on its connection); for parallel
// requests use one Client per thread. A Client is movable, not copyable; a moved-from Client may only be
// destroyed or assigned to. The daemon restarting is survived: the next call reconnects (see akidb_client.h).
#ifndef AKIDB_CLIENT_HPP
#define AKIDB_CLIENT_HPP

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "akidb_client.h"

namespace akidb {

/// A failed call: what() is the library's message, code() the akidb_status.
class Error : public std::runtime_error {
 public:
  Error(akidb_status code, const std::string& message) : std::runtime_error(message), code_(code) {}
  /// The status code (AKIDB_UNKNOWN_MODEL, AKIDB_CONNECT_FAILED, ...).
  akidb_status code() const noexcept { return code_; }
  /// The code's name: the protocol's wire name for the daemon's codes ("unknown_model").
  const char* code_name() const noexcept { return akidb_status_name(static_cast<int32_t>(code_)); }

 private:
  akidb_status code_;
};

/// Priority classes, as the Python client's "realtime" / "normal" / "bulk".
enum class Priority : int32_t {
  normal = AKIDB_PRIORITY_NORMAL,
  realtime = AKIDB_PRIORITY_REALTIME,
  bulk = AKIDB_PRIORITY_BULK,
};

/// Options of an embed call; unset ones take the daemon's defaults (Python client names).
struct EmbedOptions {
  std::optional<std::string> model;        ///< The model, by name (default: the daemon's default model).
  std::optional<std::string> prompt_name;  ///< One of the model's named prompts, e.g. "query".
  std::optional<uint32_t> dimensions;      ///< Keep the first N dimensions.
  Priority priority = Priority::normal;    ///< Priority class.
  std::optional<uint32_t> deadline_ms;     ///< Fail with AKIDB_DEADLINE_EXCEEDED after this many ms.
  std::optional<bool> normalize;           ///< L2-normalize (default: the model's setting).
  std::optional<bool> truncate;            ///< Cut over-long inputs (default true).
  std::optional<bool> cache;               ///< false bypasses the daemon's embedding cache.
};

/// The daemon's default model and limits.
struct Info {
  std::string model;
  uint32_t dim = 0;
  uint32_t max_tokens = 0;
  uint32_t max_inputs = 0;
  bool normalize = false;
  std::string version;
};

namespace detail {
inline void check(akidb_status status) {
  if (status != AKIDB_OK) throw Error(status, akidb_last_error_message());
}
inline int32_t tristate(const std::optional<bool>& value) { return value ? (*value ? 1 : 0) : -1; }
}  // namespace detail

/// One connection to akidbd (RAII: closed by the destructor).
class Client {
 public:
  /// Connects to the daemon's default socket ($XDG_RUNTIME_DIR/akidb/embed.sock, else /tmp/akidb-$UID/embed.sock).
  Client() { detail::check(akidb_connect(nullptr, &handle_)); }
  /// Connects to the socket at `socket_path`. Throws Error(AKIDB_CONNECT_FAILED) if nothing listens there.
  explicit Client(const std::string& socket_path) { detail::check(akidb_connect(socket_path.c_str(), &handle_)); }
  ~Client() { akidb_close(handle_); }

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  Client(Client&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  Client& operator=(Client&& other) noexcept {
    if (this != &other) {
      akidb_close(handle_);
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }

  /// The most time one call may take (0: no limit; default 60 s).
  void set_timeout_ms(uint32_t timeout_ms) { detail::check(akidb_set_timeout_ms(handle(), timeout_ms)); }

  /// Embeds one text.
  std::vector<float> embed(const std::string& text, const EmbedOptions& options = {}) {
    std::vector<std::vector<float>> vectors = embed(std::vector<std::string>{text}, options);
    return std::move(vectors.at(0));
  }

  /// Embeds a batch of texts (at most info().max_inputs); one vector per text, in order.
  std::vector<std::vector<float>> embed(const std::vector<std::string>& texts, const EmbedOptions& options = {}) {
    std::vector<const char*> pointers;
    pointers.reserve(texts.size());
    for (const std::string& text : texts) pointers.push_back(text.c_str());
    akidb_embed_options c_options = to_c(options);
    float* flat = nullptr;
    size_t count = 0;
    size_t dim = 0;
    detail::check(akidb_embed_alloc(handle(), pointers.data(), pointers.size(), &c_options, &flat, &count, &dim));
    std::vector<std::vector<float>> vectors;
    vectors.reserve(count);
    for (size_t i = 0; i < count; ++i) vectors.emplace_back(flat + i * dim, flat + (i + 1) * dim);
    akidb_floats_free(flat);
    return vectors;
  }

  /// "starting", "ready", "degraded", "stopping" (or "unknown"), as the Python client's health().
  std::string health() {
    akidb_health_state state = AKIDB_HEALTH_UNKNOWN;
    detail::check(akidb_health(handle(), &state));
    switch (state) {
      case AKIDB_HEALTH_STARTING: return "starting";
      case AKIDB_HEALTH_READY: return "ready";
      case AKIDB_HEALTH_DEGRADED: return "degraded";
      case AKIDB_HEALTH_STOPPING: return "stopping";
      default: return "unknown";
    }
  }

  /// The default model and limits.
  Info info() {
    akidb_server_info c_info{};
    detail::check(akidb_info(handle(), &c_info));
    Info out;
    out.model = c_info.model ? c_info.model : "";
    out.dim = c_info.dim;
    out.max_tokens = c_info.max_tokens;
    out.max_inputs = c_info.max_inputs;
    out.normalize = c_info.normalize;
    out.version = c_info.version ? c_info.version : "";
    akidb_info_free(&c_info);
    return out;
  }

  /// The C handle, for calls this wrapper does not cover (still owned by this Client).
  akidb_client* handle() const {
    if (handle_ == nullptr) throw Error(AKIDB_INVALID_ARGUMENT, "use of a moved-from akidb::Client");
    return handle_;
  }

 private:
  // The C options borrow the strings of `options`, which outlives the call.
  static akidb_embed_options to_c(const EmbedOptions& options) {
    akidb_embed_options c_options = akidb_embed_options_default();
    c_options.model = options.model ? options.model->c_str() : nullptr;
    c_options.prompt_name = options.prompt_name ? options.prompt_name->c_str() : nullptr;
    c_options.dimensions = options.dimensions.value_or(0);
    c_options.priority = static_cast<int32_t>(options.priority);
    c_options.deadline_ms = options.deadline_ms.value_or(0);
    c_options.normalize = detail::tristate(options.normalize);
    c_options.truncate = detail::tristate(options.truncate);
    c_options.cache = detail::tristate(options.cache);
    return c_options;
  }

  akidb_client* handle_ = nullptr;
};

}  // namespace akidb

#endif  // AKIDB_CLIENT_HPP
