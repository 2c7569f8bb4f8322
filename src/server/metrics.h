// Prometheus text for GET /metrics: llama.cpp's metric names (llamacpp:*) plus kvstash's
// extensions (kvstash:*): prompt tokens served from the cache, slot saves/restores that
// succeeded or failed, and bytes written and read by them.
// Thread-safe: a pure function of its inputs.
#pragma once

#include <string>

#include "engine/scheduler.h"

namespace kvstash {

// Gauges are computed over the window since the previous scrape, as llama.cpp does.
std::string format_metrics(const SchedulerMetrics& m);

}  // namespace kvstash
