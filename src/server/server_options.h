// ServerOptions: everything `kvstash serve` is configured with (llama-server's flags).
// Owns nothing; a plain value filled by src/cli/cmd_serve.cpp and read by src/server.
// Thread-safe: immutable once the server starts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvstash {

struct ServerOptions {
  std::string model_path;
  std::string alias;                 // -a: the model name in responses (default: model_path)
  std::string host = "127.0.0.1";
  int port = 8080;                   // 0: any free port (printed at start)
  uint32_t n_ctx = 0;                // -c: cache cells shared by all slots (0: min(training, 4096))
  int32_t n_parallel = 1;            // -np: slots; each gets n_ctx / n_parallel tokens
  int n_threads = 0;                 // -t
  int32_t n_batch = 2048;            // -b: tokens per step (one decode call)
  int32_t n_ubatch = 512;            // -ub: tokens per forward pass
  std::string cache_type_k = "f16";  // -ctk
  std::string cache_type_v = "f16";  // -ctv
  std::string slot_save_path;        // empty: slot save/restore/erase answer 501
  std::vector<std::string> api_keys; // --api-key (comma list), LLAMA_API_KEY, --api-key-file
  uint64_t seed = 0xFFFFFFFFull;     // default request seed (0xFFFFFFFF: random per request)
  int32_t n_predict = -1;            // -n: default n_predict of requests
  bool metrics = false;              // --metrics: enable /metrics
  bool no_slots = false;             // --no-slots: disable GET /slots
  std::string chat_template;         // --chat-template NAME (empty: detect from the GGUF)
  size_t max_body_bytes = size_t(16) << 20;  // --max-body-size
  int32_t slot_wait_ms = 30000;      // --slot-wait-ms: bounded wait of save/restore/erase on a busy slot
  int threads_http = -1;             // --threads-http (-1: max(32, 4 * n_parallel + 8))
  bool slot_save_no_fsync = false;   // --slot-save-no-fsync: atomic but not durable saves
};

}  // namespace kvstash
