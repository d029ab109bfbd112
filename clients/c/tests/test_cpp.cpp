// The C++ wrapper against a real akidbd, as a C++ programmer uses it. Driven by tests/it/cclient.rs.
//
// Usage: test_cpp MODE SOCKET [ARG]
//   basic SOCKET OUT      embed one text and a batch (vectors to OUT for a bit-for-bit comparison), exceptions
//                         with codes, moves, info and health
//   threads SOCKET        8 threads embed concurrently on one Client; every vector equals the single-threaded one
//   restart SOCKET        the daemon dies and comes back under us, driven line by line over stdin/stdout
//   stall SOCKET          the daemon stops answering (SIGSTOP), then answers again (SIGCONT), driven the same way
//   bench SOCKET N [nocache]  latency of one short sentence, N sequential requests after a warm-up (cache off
//                         with nocache): JSON on stdout
// Prints "cpp MODE: N passed, M failed" (bench: the JSON) and exits non-zero on a failure.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "akidb_client.hpp"

namespace {

int passed = 0;
int failed = 0;

void check(bool cond, const std::string& what) {
  if (cond) {
    ++passed;
  } else {
    ++failed;
    std::cerr << "FAIL: " << what << "\n";
  }
}

// Runs `call`, which must throw akidb::Error with `code`.
template <typename F>
void expect_error(akidb_status code, const std::string& what, F call) {
  try {
    call();
    check(false, what + ": no exception");
  } catch (const akidb::Error& error) {
    check(error.code() == code, what + ": got " + error.code_name() + " (" + error.what() + ")");
  }
}

const char* const kText = "Move the arm to the home position.";

int basic(const std::string& socket, const std::string& out_path) {
  akidb::Client client(socket);
  check(client.health() == "ready", "health");
  akidb::Info info = client.info();
  check(info.dim == 384 && !info.model.empty() && !info.version.empty(), "info");

  std::vector<float> one = client.embed(kText);
  check(one.size() == 384, "one vector");
  std::vector<std::string> batch = {kText, "Where is the charging station?", ""};
  std::vector<std::vector<float>> vectors = client.embed(batch);
  check(vectors.size() == 3 && vectors[0] == one, "batch of 3, first equals the single call");

  std::ofstream out(out_path, std::ios::binary);
  for (const auto& vector : vectors) out.write(reinterpret_cast<const char*>(vector.data()), vector.size() * sizeof(float));
  out.close();
  check(out.good(), "write vectors");

  akidb::EmbedOptions options;
  options.model = "no-such-model";
  expect_error(AKIDB_UNKNOWN_MODEL, "unknown model", [&] { client.embed(kText, options); });
  try {
    client.embed(kText, options);
  } catch (const akidb::Error& error) {
    check(std::string(error.code_name()) == "unknown_model", "code_name");
    check(std::string(error.what()).find("no-such-model") != std::string::npos, "what() names the model");
  }
  expect_error(AKIDB_INVALID_REQUEST, "empty input", [&] { client.embed(std::vector<std::string>{}); });
  akidb::EmbedOptions strict;
  strict.truncate = false;
  std::string long_text;
  for (int i = 0; i < 600; ++i) long_text += "robot ";
  expect_error(AKIDB_INPUT_TOO_LONG, "too long", [&] { client.embed(long_text, strict); });
  expect_error(AKIDB_CONNECT_FAILED, "nothing listening", [] { akidb::Client("/nonexistent-akidb-dir/embed.sock"); });

  akidb::EmbedOptions small;
  small.dimensions = 32;
  small.priority = akidb::Priority::realtime;
  small.prompt_name = std::nullopt;
  check(client.embed(kText, small).size() == 32, "dimensions");

  // Moves: the connection follows, the moved-from Client refuses politely.
  akidb::Client moved = std::move(client);
  check(moved.embed(kText) == one, "moved-to Client works");
  expect_error(AKIDB_INVALID_ARGUMENT, "moved-from Client", [&] { client.health(); });
  client = std::move(moved);
  check(client.embed(kText) == one, "move-assigned back");
  return 0;
}

int threads(const std::string& socket) {
  akidb::Client client(socket);
  const int n_threads = 8;
  const int per_thread = 12;
  std::vector<std::string> texts;
  std::vector<std::vector<float>> expected;
  for (int t = 0; t < n_threads; ++t) {
    texts.push_back("thread " + std::to_string(t) + " asks where the cup is");
    expected.push_back(client.embed(texts.back()));
  }
  std::atomic<int> mismatches{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < n_threads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        try {
          // Alternate a single text and a batch, so that replies of several shapes interleave.
          if (i % 2 == 0) {
            if (client.embed(texts[t]) != expected[t]) ++mismatches;
          } else {
            auto pair = client.embed(std::vector<std::string>{texts[t], texts[(t + 1) % n_threads]});
            if (pair[0] != expected[t] || pair[1] != expected[(t + 1) % n_threads]) ++mismatches;
          }
        } catch (const akidb::Error& error) {
          std::cerr << "thread " << t << ": " << error.code_name() << ": " << error.what() << "\n";
          ++errors;
        }
      }
    });
  }
  for (auto& worker : workers) worker.join();
  check(errors == 0, "no errors from 8 threads (" + std::to_string(errors) + ")");
  check(mismatches == 0, "every vector equals the single-threaded one (" + std::to_string(mismatches) + " differ)");
  return 0;
}

// Waits for the driver's next line on stdin.
std::string next_line() {
  std::string line;
  std::getline(std::cin, line);
  return line;
}

double seconds_of(const std::function<void()>& call) {
  auto start = std::chrono::steady_clock::now();
  call();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int restart(const std::string& socket) {
  // SIGPIPE keeps its default action (death), as in most C++ programs: the library must not raise it.
  std::signal(SIGPIPE, SIG_DFL);
  akidb::Client client(socket);
  client.set_timeout_ms(20000);
  std::vector<float> before = client.embed(kText);
  std::cout << "embedded" << std::endl;

  check(next_line() == "killed", "driver killed the daemon");
  // The connection is dead and nothing listens: reported at once, not hung on.
  double took = seconds_of([&] {
    expect_error(AKIDB_CONNECT_FAILED, "dead daemon", [&] { client.embed(kText); });
  });
  check(took < 5.0, "the dead daemon is reported in " + std::to_string(took) + " s");
  expect_error(AKIDB_CONNECT_FAILED, "still dead", [&] { client.health(); });
  std::cout << "reported" << std::endl;

  check(next_line() == "restarted", "driver restarted the daemon");
  // The next call reconnects by itself.
  check(client.embed(kText) == before, "after a restart the next call reconnects");
  std::cout << "reconnected" << std::endl;

  check(next_line() == "restarted", "driver restarted the daemon again, with no call in between");
  // The connection we hold is stale: the call finds it broken, reconnects once and retries, transparently.
  check(client.embed(kText) == before, "a stale connection is replaced within the call");
  check(client.health() == "ready", "health after restarts");
  std::cout << "done" << std::endl;
  return 0;
}

// The daemon stops answering (SIGSTOP) under a connected client: the call times out instead of hanging, and
// once the daemon answers again (SIGCONT) the next call reconnects.
int stall(const std::string& socket) {
  akidb::Client client(socket);
  client.set_timeout_ms(500);
  std::vector<float> before = client.embed(kText);
  std::cout << "embedded" << std::endl;

  check(next_line() == "stopped", "driver stopped the daemon");
  double took = seconds_of([&] { expect_error(AKIDB_TIMEOUT, "stalled daemon", [&] { client.embed(kText); }); });
  check(took >= 0.4 && took < 3.0, "the stalled daemon is reported after " + std::to_string(took) + " s");
  std::cout << "timed_out" << std::endl;

  check(next_line() == "continued", "driver continued the daemon");
  client.set_timeout_ms(20000);
  check(client.embed(kText) == before, "the next call reconnects");
  std::cout << "done" << std::endl;
  return 0;
}

int bench(const std::string& socket, int n_requests, bool cache) {
  akidb::Client client(socket);
  akidb::EmbedOptions options;
  options.cache = cache;
  for (int i = 0; i < 50; ++i) client.embed(kText, options);
  std::vector<double> micros;
  micros.reserve(n_requests);
  for (int i = 0; i < n_requests; ++i) {
    auto start = std::chrono::steady_clock::now();
    std::vector<float> vector = client.embed(kText, options);
    micros.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
    if (vector.size() != 384) return 1;
  }
  std::sort(micros.begin(), micros.end());
  auto at = [&](double q) { return micros[std::min(micros.size() - 1, static_cast<size_t>(q * micros.size()))]; };
  std::printf("{\"client\": \"c++\", \"requests\": %d, \"p50_us\": %.1f, \"p99_us\": %.1f}\n", n_requests, at(0.5),
              at(0.99));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " basic|threads|restart|bench SOCKET [ARG]\n";
    return 2;
  }
  std::string mode = argv[1];
  std::string socket = argv[2];
  try {
    if (mode == "bench") return bench(socket, argc > 3 ? std::atoi(argv[3]) : 500, !(argc > 4 && std::string(argv[4]) == "nocache"));
    if (mode == "basic") basic(socket, argc > 3 ? argv[3] : "/dev/null");
    else if (mode == "threads") threads(socket);
    else if (mode == "restart") restart(socket);
    else if (mode == "stall") stall(socket);
    else {
      std::cerr << "unknown mode " << mode << "\n";
      return 2;
    }
  } catch (const akidb::Error& error) {
    std::cerr << "unexpected akidb::Error " << error.code_name() << ": " << error.what() << "\n";
    ++failed;
  }
  std::printf("cpp %s: %d passed, %d failed\n", mode.c_str(), passed, failed);
  return failed == 0 ? 0 : 1;
}
