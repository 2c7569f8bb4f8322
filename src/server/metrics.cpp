#include "server/metrics.h"

#include <cstdio>
#include <sstream>

namespace kvstash {
namespace {

void metric(std::ostringstream& ss, const char* prefix, const char* name, const char* type, const char* help, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", value);
  ss << "# HELP " << prefix << ":" << name << " " << help << "\n";
  ss << "# TYPE " << prefix << ":" << name << " " << type << "\n";
  ss << prefix << ":" << name << " " << buf << "\n";
}

double ratio(double a, double b) { return b > 0 ? a / b : 0.0; }

}  // namespace

std::string format_metrics(const SchedulerMetrics& m) {
  std::ostringstream ss;
  const char* L = "llamacpp";
  metric(ss, L, "prompt_tokens_total", "counter", "Number of prompt tokens processed.", double(m.prompt_tokens_total));
  metric(ss, L, "prompt_seconds_total", "counter", "Prompt process time", m.prompt_seconds_total);
  metric(ss, L, "tokens_predicted_total", "counter", "Number of generation tokens processed.", double(m.tokens_predicted_total));
  metric(ss, L, "tokens_predicted_seconds_total", "counter", "Predict process time", m.predicted_seconds_total);
  metric(ss, L, "n_decode_total", "counter", "Total number of llama_decode() calls", double(m.n_decode_total));
  metric(ss, L, "n_tokens_max", "counter", "Largest observed n_tokens.", double(m.n_tokens_max));
  metric(ss, L, "n_busy_slots_per_decode", "counter", "Average number of busy slots per llama_decode() call",
         ratio(double(m.window_busy_slots), double(m.window_decodes)));
  metric(ss, L, "prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.",
         ratio(double(m.window_prompt_tokens), m.window_prompt_seconds));
  metric(ss, L, "predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.",
         ratio(double(m.window_predicted_tokens), m.window_predicted_seconds));
  metric(ss, L, "requests_processing", "gauge", "Number of requests processing.", m.requests_processing);
  metric(ss, L, "requests_deferred", "gauge", "Number of requests deferred.", m.requests_deferred);
  metric(ss, L, "kv_cache_usage_ratio", "gauge", "KV-cache usage. 1 means 100 percent usage.", ratio(m.kv_cells_used, m.kv_cells));
  metric(ss, L, "kv_cache_tokens", "gauge", "KV-cache tokens.", m.kv_cells_used);

  const char* K = "kvstash";
  metric(ss, K, "requests_total", "counter", "Generation requests received.", double(m.requests_total));
  metric(ss, K, "requests_cancelled_total", "counter", "Generation requests dropped before their end because their client disconnected.",
         double(m.requests_cancelled));
  metric(ss, K, "prompt_tokens_cached_total", "counter", "Prompt tokens served from the slot cache instead of computed.",
         double(m.prompt_tokens_cached_total));
  metric(ss, K, "slot_saves_total", "counter", "Slot saves that succeeded.", double(m.slot_save_ok));
  metric(ss, K, "slot_saves_failed_total", "counter", "Slot saves that failed (including busy-slot timeouts).", double(m.slot_save_fail));
  metric(ss, K, "slot_restores_total", "counter", "Slot restores that succeeded.", double(m.slot_restore_ok));
  metric(ss, K, "slot_restores_failed_total", "counter", "Slot restores that failed (including busy-slot timeouts).",
         double(m.slot_restore_fail));
  metric(ss, K, "slot_erases_total", "counter", "Slot erases.", double(m.slot_erase));
  metric(ss, K, "slot_save_bytes_written_total", "counter", "Bytes of state files written by slot saves.", double(m.slot_bytes_written));
  metric(ss, K, "slot_restore_bytes_read_total", "counter", "Bytes of state files read by slot restores.", double(m.slot_bytes_read));
  return ss.str();
}

}  // namespace kvstash
