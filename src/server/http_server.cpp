#include "server/http_server.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <thread>

#include "server/client_socket.h"
#include "server/json_io.h"
#include "server/server_state.h"

namespace kvstash {

void send_json(httplib::Response& res, const nlohmann::json& j, int status) {
  res.status = status;
  res.set_content(dump_json(j), "application/json; charset=utf-8");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, error_body(e), error_status(e)); }

httplib::Server::Handler guarded(ServerState& st, RouteFn fn) {
  return [&st, fn = std::move(fn)](const httplib::Request& req, httplib::Response& res) {
    // Dekker-style with shutdown(): either shutdown sees this request in flight, or this request
    // sees the drain and backs out.
    st.in_flight.fetch_add(1);
    if (st.draining.load()) {
      st.in_flight.fetch_sub(1);
      send_error(res, api_error(ErrorKind::Unavailable, "the server is shutting down"));
      return;
    }
    try {
      fn(st, req, res);
    } catch (const std::exception& e) {
      send_error(res, api_error(ErrorKind::Server, std::string("internal error: ") + e.what()));
    } catch (...) {
      send_error(res, api_error(ErrorKind::Server, "internal error"));
    }
    st.in_flight.fetch_sub(1);
  };
}

namespace {

constexpr int kListenBacklog = 1024;

bool is_public_path(const std::string& p) {
  return p == "/health" || p == "/v1/health" || p == "/models" || p == "/v1/models" || p == "/";
}

// Constant-time comparison: the time taken does not reveal how much of a key matched.
bool same_key(const std::string& a, const std::string& b) {
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < a.size(); ++i) diff |= unsigned(uint8_t(a[i]) ^ uint8_t(i < b.size() ? b[i] : 0));
  return diff == 0;
}

std::string default_message(int status) {
  switch (status) {
    case 400: return "Bad request";
    case 404: return "File Not Found";
    case 405: return "Method not allowed";
    case 413: return "Request body too large";
    case 414: return "Request URI too long";
    case 416: return "Range not satisfiable";
    default: return "HTTP error " + std::to_string(status);
  }
}

ErrorKind kind_for_status(int status) {
  switch (status) {
    case 401: return ErrorKind::Authentication;
    case 403: return ErrorKind::Permission;
    case 404: return ErrorKind::NotFound;
    case 409: return ErrorKind::Conflict;
    case 413: return ErrorKind::PayloadTooLarge;
    case 501: return ErrorKind::NotSupported;
    case 503: return ErrorKind::Unavailable;
    default: return status >= 500 ? ErrorKind::Server : ErrorKind::InvalidRequest;
  }
}

}  // namespace

struct HttpServer::Impl {
  ServerState st;
  httplib::Server svr;
  std::thread thread;
  std::atomic<bool> listen_returned{false};
  int port = -1;
};

HttpServer::HttpServer(ServerOptions opt) : impl_(std::make_unique<Impl>()) {
  ServerState& st = impl_->st;
  st.opt = std::move(opt);
  st.start_unix = static_cast<int64_t>(std::time(nullptr));
  st.build_info = std::string("kvstash ") + KVSTASH_VERSION + " (" + KVSTASH_COMMIT + ")";
  httplib::Server& svr = impl_->svr;

  const int n_http = st.opt.threads_http > 0 ? st.opt.threads_http : std::max(32, 4 * st.opt.n_parallel + 8);
  svr.new_task_queue = [n_http] { return new httplib::ThreadPool(size_t(n_http)); };
  svr.set_payload_max_length(st.opt.max_body_bytes);
  svr.set_read_timeout(600);
  svr.set_write_timeout(600);

  svr.set_pre_routing_handler([&st](const httplib::Request& req, httplib::Response& res) {
    if (req.has_header("Origin")) {
      res.set_header("Access-Control-Allow-Origin", req.get_header_value("Origin"));
      res.set_header("Access-Control-Allow-Credentials", "true");
    }
    if (req.method == "OPTIONS") {  // CORS pre-flight: no key needed
      res.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "*");
      res.status = 200;
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!st.ready.load()) {
      send_error(res, api_error(ErrorKind::Unavailable, "Loading model"));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!st.opt.api_keys.empty() && !is_public_path(req.path)) {
      std::string key = req.get_header_value("Authorization");
      const std::string bearer = "Bearer ";
      if (key.compare(0, bearer.size(), bearer) == 0) key = key.substr(bearer.size());
      else key = req.get_header_value("X-Api-Key");
      bool ok = false;
      for (const auto& k : st.opt.api_keys) ok |= same_key(k, key);
      if (!ok) {
        send_error(res, api_error(ErrorKind::Authentication, "Invalid API Key"));
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Errors httplib produces itself (404, 413, malformed requests) get the same JSON envelope.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([&st](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string msg = default_message(res.status);
    if (res.status == 413) msg += " (limit " + std::to_string(st.opt.max_body_bytes) + " bytes)";
    send_error(res, api_error(kind_for_status(res.status), msg));
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string msg = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg += std::string(": ") + e.what();
    } catch (...) {
    }
    send_error(res, api_error(ErrorKind::Server, msg));
  });

  add_info_routes(svr, st);
  add_completion_routes(svr, st);
  add_slot_routes(svr, st);
}

namespace {
// httplib's stop() does nothing until its listen loop has marked itself running, so a stop that
// comes right after start() (a start-up error) would leave the loop listening forever and the
// join hanging: wait for the loop to run (or to have returned by itself) before stopping it.
void stop_listener(httplib::Server& svr, std::thread& thread, const std::atomic<bool>& listen_returned) {
  if (!thread.joinable()) return;
  while (!svr.is_running() && !listen_returned.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  svr.stop();
  thread.join();
}
}  // namespace

HttpServer::~HttpServer() { stop_listener(impl_->svr, impl_->thread, impl_->listen_returned); }

Status HttpServer::bind() {
  const ServerOptions& o = impl_->st.opt;
  if (o.port == 0) {
    impl_->port = impl_->svr.bind_to_any_port(o.host);
  } else if (impl_->svr.bind_to_port(o.host, o.port)) {
    impl_->port = o.port;
  }
  if (impl_->port <= 0) return io_error("serve: cannot listen on " + o.host + ":" + std::to_string(o.port) + " (address in use or not local?)");
  // httplib listens with a backlog of 5: a burst of clients (32 connecting at once) would see
  // SYNs dropped and retried a second later. The kernel caps this at net.core.somaxconn.
  if (!raise_listen_backlog(impl_->port, kListenBacklog))
    std::fprintf(stderr, "serve: warning: could not raise the listen backlog of port %d\n", impl_->port);
  return Status::ok();
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::start() {
  impl_->thread = std::thread([this] {
    impl_->svr.listen_after_bind();
    impl_->listen_returned.store(true);
  });
}

void HttpServer::set_ready(ServerEngine engine) {
  ServerState& st = impl_->st;
  st.engine = std::move(engine);
  const Model& m = *st.engine.model;
  const Vocab& v = m.vocab();
  size_t max_bytes = 1;
  for (int32_t id = 0; id < v.n_tokens(); ++id) max_bytes = std::max(max_bytes, v.token_text(id).size());
  st.rctx.vocab = &v;
  st.rctx.n_vocab = static_cast<int32_t>(m.hparams().n_vocab);
  st.rctx.n_ctx_slot = st.engine.scheduler->n_ctx_slot();
  st.rctx.n_slots = st.engine.scheduler->n_slots();
  st.rctx.max_token_bytes = max_bytes;
  st.rctx.chat = &st.engine.chat;
  st.rctx.default_seed = st.opt.seed;
  st.rctx.default_n_predict = st.opt.n_predict;
  st.resp.vocab = &v;
  st.resp.model = st.opt.alias.empty() ? st.opt.model_path : st.opt.alias;
  st.resp.build_info = st.build_info;
  st.resp.n_ctx_slot = st.rctx.n_ctx_slot;
  st.type_k = st.opt.cache_type_k;
  st.type_v = st.opt.cache_type_v;
  st.ready.store(true);
}

void HttpServer::shutdown() {
  ServerState& st = impl_->st;
  st.draining.store(true);
  while (st.in_flight.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  stop_listener(impl_->svr, impl_->thread, impl_->listen_returned);
}

int HttpServer::in_flight() const { return impl_->st.in_flight.load(); }

}  // namespace kvstash
