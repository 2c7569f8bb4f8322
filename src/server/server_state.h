// ServerState: what every route reads — options, engine, request/response contexts — and the
// helpers routes use to answer (JSON, error envelope, in-flight accounting).
// Internal to src/server (includes httplib). Thread-safe: immutable once ready, except the
// atomics.
#pragma once

#include <httplib.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "server/errors.h"
#include "server/http_server.h"
#include "server/request_params.h"
#include "server/response_format.h"

namespace kvstash {

struct ServerState {
  ServerOptions opt;
  std::atomic<bool> ready{false};
  std::atomic<bool> draining{false};
  std::atomic<int> in_flight{0};
  int64_t start_unix = 0;
  std::string build_info;
  // Set once by set_ready(), before `ready` becomes true.
  ServerEngine engine;
  RequestContext rctx;
  ResponseContext resp;
  std::string type_k, type_v;
};

void send_json(httplib::Response& res, const nlohmann::json& j, int status = 200);
void send_error(httplib::Response& res, const ApiError& e);

using RouteFn = std::function<void(ServerState&, const httplib::Request&, httplib::Response&)>;
// Wraps a route: counts it in flight, refuses it while draining, and turns any exception into a
// 500 envelope (no exception reaches httplib).
httplib::Server::Handler guarded(ServerState& st, RouteFn fn);

void add_info_routes(httplib::Server& svr, ServerState& st);
void add_completion_routes(httplib::Server& svr, ServerState& st);
void add_slot_routes(httplib::Server& svr, ServerState& st);

}  // namespace kvstash
