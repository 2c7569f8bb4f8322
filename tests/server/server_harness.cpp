#include "server_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "gguf/gguf_reader.h"
#include "gguf/gguf_writer.h"
#include "test_paths.h"

extern char** environ;

namespace kvstash::test {
namespace fs = std::filesystem;

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  path_ = (fs::temp_directory_path() / ("kvstash_srv_" + std::to_string(::getpid()) + "_" + std::to_string(counter.fetch_add(1)))).string();
  fs::remove_all(path_);
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

ServerProcess::ServerProcess(std::vector<std::string> args, std::map<std::string, std::string> env)
    : args_(std::move(args)), env_(std::move(env)) {
  log_path_ = dir_ / "server.log";
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
  expect_no_sanitizer_report();
}

void ServerProcess::expect_no_sanitizer_report() {
  if (report_checked_) return;
  report_checked_ = true;
  const std::string l = log();
  for (const char* marker : {"WARNING: ThreadSanitizer", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"})
    if (l.find(marker) != std::string::npos) {
      ADD_FAILURE() << "the server's log holds a sanitizer report (" << marker << "):\n" << l;
      return;
    }
}

void ServerProcess::spawn() {
  report_checked_ = false;
  std::vector<std::string> argv = {KVSTASH_BINARY, "serve", "--port", "0"};
  bool has_model = false;
  for (const auto& a : args_) has_model |= a == "-m" || a == "--model";
  if (!has_model) {
    argv.push_back("-m");
    argv.push_back(model_path("stories260K.gguf"));
  }
  argv.insert(argv.end(), args_.begin(), args_.end());
  std::vector<char*> av;
  for (auto& a : argv) av.push_back(a.data());
  av.push_back(nullptr);
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const std::string key = kv.substr(0, kv.find('='));
    if (!env_.count(key)) envs.push_back(kv);
  }
  for (const auto& [k, v] : env_) envs.push_back(k + "=" + v);
  std::vector<char*> ev;
  for (auto& e : envs) ev.push_back(e.data());
  ev.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  const int rc = posix_spawn(&pid_, av[0], &fa, nullptr, av.data(), ev.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error(std::string("posix_spawn failed: ") + std::strerror(rc));
}

bool ServerProcess::running() const {
  if (pid_ <= 0) return false;
  int st = 0;
  return ::waitpid(pid_, &st, WNOHANG) == 0;
}

std::string ServerProcess::log() const {
  std::ifstream f(log_path_);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void ServerProcess::start() {
  spawn();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  const std::string marker = "listening on http://127.0.0.1:";
  while (port_ < 0) {
    const std::string l = log();
    const size_t at = l.find(marker);
    if (at != std::string::npos && l.find('\n', at) != std::string::npos) port_ = std::atoi(l.c_str() + at + marker.size());
    else if (!running()) throw std::runtime_error("server exited during start-up:\n" + l);
    else if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("server did not listen:\n" + l);
    else std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (;;) {
    auto c = client(2);
    auto r = c.Get("/health");
    if (r && r->status == 200) return;
    if (!running()) throw std::runtime_error("server exited during loading:\n" + log());
    if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("server never became healthy:\n" + log());
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

int ServerProcess::run_to_exit(int timeout_ms) {
  spawn();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    if (std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

int ServerProcess::stop(int sig) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, sig);
  int st = 0;
  ::waitpid(pid_, &st, 0);
  pid_ = -1;
  expect_no_sanitizer_report();
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

httplib::Client ServerProcess::client(int timeout_s) const {
  httplib::Client c("127.0.0.1", port_);
  c.set_connection_timeout(5);
  c.set_read_timeout(timeout_s);
  c.set_write_timeout(timeout_s);
  return c;
}

namespace {
HttpResult wrap(const httplib::Result& r) {
  HttpResult out;
  if (!r) return out;
  out.status = r->status;
  out.raw = r->body;
  out.headers = r->headers;
  out.body = json::parse(r->body, nullptr, false);
  if (out.body.is_discarded()) out.body = nullptr;
  return out;
}
}  // namespace

HttpResult get(httplib::Client& c, const std::string& path, const httplib::Headers& h) { return wrap(c.Get(path, h)); }
HttpResult post(httplib::Client& c, const std::string& path, const json& body, const httplib::Headers& h) {
  return wrap(c.Post(path, h, body.dump(), "application/json"));
}
HttpResult post_raw(httplib::Client& c, const std::string& path, const std::string& body, const httplib::Headers& h) {
  return wrap(c.Post(path, h, body, "application/json"));
}
HttpResult del(httplib::Client& c, const std::string& path, const httplib::Headers& h) { return wrap(c.Delete(path, h)); }

std::vector<std::string> sse_payloads(const std::string& body) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < body.size()) {
    const size_t end = body.find("\n\n", i);
    if (end == std::string::npos) throw std::runtime_error("SSE: event not terminated by a blank line: " + body.substr(i, 200));
    const std::string ev = body.substr(i, end - i);
    i = end + 2;
    if (!ev.empty() && ev[0] == ':') continue;
    if (ev.rfind("data: ", 0) != 0) throw std::runtime_error("SSE: event does not start with 'data: ': " + ev.substr(0, 200));
    if (ev.find('\n') != std::string::npos) throw std::runtime_error("SSE: multi-line event: " + ev.substr(0, 200));
    out.push_back(ev.substr(6));
  }
  return out;
}

int raw_request(int port, const std::string& method, const std::string& path, const std::string& body) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    throw std::runtime_error("connect failed");
  }
  const std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
  size_t off = 0;
  while (off < req.size()) {
    const ssize_t n = ::send(fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += size_t(n);
  }
  return fd;
}

void copy_gguf_with(const std::string& src, const std::string& dst, const std::map<std::string, std::string>& strings) {
  auto f = GgufFile::open(src);
  if (!f.is_ok()) throw std::runtime_error(f.status().to_string());
  const GgufFile& g = **f;
  GgufWriter w;
  w.set_alignment(g.alignment());
  for (const auto& [k, v] : g.metadata())
    if (k != "general.alignment" && !strings.count(k)) w.add_value(k, v);
  for (const auto& [k, v] : strings) w.add_string(k, v);
  for (const auto& t : g.tensors()) {
    std::vector<uint64_t> dims(t.ne, t.ne + t.n_dims);
    const uint8_t* data = t.data;
    w.add_tensor(t.name, t.type, dims, [data](uint8_t* d, uint64_t n) { std::memcpy(d, data, n); });
  }
  if (auto s = w.write_file(dst); !s.is_ok()) throw std::runtime_error(s.to_string());
}

}  // namespace kvstash::test
