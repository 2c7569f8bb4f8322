// HttpServer: kvstash's llama.cpp-compatible HTTP API on cpp-httplib.
// Owns: the listening socket, the HTTP worker threads and the request-level policies shared by
// every route (API key, body size bound, "Loading model" until ready, JSON error envelope, CORS,
// graceful drain). Routes live in routes_*.cpp. No httplib type leaks out of src/server.
// Thread-safe: bind/start/set_ready/shutdown are called by one controlling thread (main).
#pragma once

#include <memory>
#include <optional>

#include "core/status.h"
#include "engine/scheduler.h"
#include "model/model.h"
#include "server/chat_template.h"
#include "server/server_options.h"
#include "server/slot_files.h"

namespace kvstash {

// What the routes need once the model is loaded.
struct ServerEngine {
  const Model* model = nullptr;
  Scheduler* scheduler = nullptr;
  ChatTemplate chat;
  std::optional<SlotDir> slot_dir;  // nullopt: no --slot-save-path
};

class HttpServer {
 public:
  explicit HttpServer(ServerOptions opt);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port (port 0: a free port). IO error naming the address on failure.
  Status bind();
  int port() const;
  // Serves on a background thread. Until set_ready(), every endpoint answers 503 "Loading model".
  void start();
  // The engine is up: every endpoint answers from now on. The engine must outlive shutdown().
  void set_ready(ServerEngine engine);
  // Graceful: new requests get 503, in-flight ones (streams included) finish, then the socket
  // closes and the worker threads are joined.
  void shutdown();
  // Requests being handled now (streams count until their last byte).
  int in_flight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash
