// Test harness for the HTTP server: starts the real `kvstash serve` binary (KVSTASH_BINARY) on
// 127.0.0.1 at a free port (--port 0; the port is read from its log), talks HTTP with
// httplib::Client, and reads server-sent events. A sanitizer report in the server's log (ASan,
// UBSan, TSan builds) fails the test that ran it.
#pragma once

#include <httplib.h>
#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvstash::test {

using json = nlohmann::json;

// A fresh directory under /tmp, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

class ServerProcess {
 public:
  // args: flags after `serve -m stories260K.gguf --port 0` (a different -m in args wins).
  explicit ServerProcess(std::vector<std::string> args, std::map<std::string, std::string> env = {});
  ~ServerProcess();  // SIGKILL if still running; then as expect_no_sanitizer_report()

  // Spawns and waits until /health answers 200 (throws, with the log, on failure).
  void start();
  // Sends `sig` and waits; returns the exit status (128 + signal when killed). Then as
  // expect_no_sanitizer_report().
  int stop(int sig = 15);
  // Fails the current test (once) if the server's log holds a sanitizer report.
  void expect_no_sanitizer_report();
  // Spawns and waits for the process to exit by itself (for start-up errors); returns the status.
  int run_to_exit(int timeout_ms = 20000);
  bool running() const;
  pid_t pid() const { return pid_; }

  int port() const { return port_; }
  std::string log() const;
  httplib::Client client(int timeout_s = 60) const;

 private:
  void spawn();
  std::vector<std::string> args_;
  std::map<std::string, std::string> env_;
  TempDir dir_;
  std::string log_path_;
  pid_t pid_ = -1;
  int port_ = -1;
  bool report_checked_ = false;
};

struct HttpResult {
  int status = 0;  // 0: no response (connection error)
  json body;       // parsed body (null when not JSON)
  std::string raw;
  httplib::Headers headers;
};

HttpResult get(httplib::Client& c, const std::string& path, const httplib::Headers& h = {});
HttpResult post(httplib::Client& c, const std::string& path, const json& body, const httplib::Headers& h = {});
HttpResult post_raw(httplib::Client& c, const std::string& path, const std::string& body, const httplib::Headers& h = {});
HttpResult del(httplib::Client& c, const std::string& path, const httplib::Headers& h = {});

// The `data:` payloads of an SSE body, in order ("[DONE]" kept as the string). Every event must
// be "data: <payload>\n\n"; comments (":...") are skipped. Throws on a malformed stream.
std::vector<std::string> sse_payloads(const std::string& body);

// Writes a raw HTTP/1.1 request on a new TCP connection to 127.0.0.1:port and returns the socket.
int raw_request(int port, const std::string& method, const std::string& path, const std::string& body);

// A copy of `src` GGUF with extra string metadata (e.g. tokenizer.chat_template).
void copy_gguf_with(const std::string& src, const std::string& dst, const std::map<std::string, std::string>& strings);

}  // namespace kvstash::test
