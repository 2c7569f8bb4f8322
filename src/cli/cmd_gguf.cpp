// `kvstash gguf FILE`: metadata and tensor table of a GGUF file.
#include <cstdio>

#include "cli/commands.h"
#include "gguf/gguf_reader.h"

namespace kvstash::cli {

std::vector<std::string> normalize_llama_flags(const std::vector<std::string>& args) {
  static const std::pair<const char*, const char*> kMap[] = {
      {"-ctk", "--cache-type-k"}, {"-ctv", "--cache-type-v"}, {"-ub", "--ubatch-size"},
      {"-np", "--parallel"},      {"-ngl", "--n-gpu-layers"}, {"-fa", "--flash-attn"},
  };
  std::vector<std::string> out;
  out.reserve(args.size());
  for (const auto& a : args) {
    std::string r = a;
    for (const auto& [from, to] : kMap)
      if (a == from) r = to;
    out.push_back(r);
  }
  return out;
}

void add_gguf_command(CLI::App& app, GgufOptions& o) {
  auto* c = app.add_subcommand("gguf", "Print the metadata and tensor table of a GGUF file");
  c->add_option("file", o.file, "GGUF file")->required();
  c->add_flag("--all", o.all_values, "Print whole arrays");
}

int gguf_command(const GgufOptions& o) {
  auto f = GgufFile::open(o.file);
  if (!f.is_ok()) {
    std::fprintf(stderr, "error: %s\n", f.status().to_string().c_str());
    return 1;
  }
  const GgufFile& g = **f;
  std::printf("GGUF v%u, %zu metadata keys, %zu tensors, alignment %u, data at offset %llu, %llu bytes\n", g.version(),
              g.metadata().size(), g.tensors().size(), g.alignment(), static_cast<unsigned long long>(g.data_offset()),
              static_cast<unsigned long long>(g.file_size()));
  std::printf("\nmetadata:\n");
  for (const auto& [k, v] : g.metadata()) {
    const std::string type = v.type == GgufType::ARRAY ? std::string("arr[") + gguf_type_name(v.elem_type) + "]" : gguf_type_name(v.type);
    std::printf("  %-45s %-12s %s\n", k.c_str(), type.c_str(), v.to_display(o.all_values ? SIZE_MAX : 8).c_str());
  }
  std::printf("\ntensors:\n  %-4s %-40s %-6s %-28s %14s %14s\n", "#", "name", "type", "shape", "offset", "bytes");
  uint64_t total = 0;
  for (size_t i = 0; i < g.tensors().size(); ++i) {
    const auto& t = g.tensors()[i];
    std::string shape = "[";
    for (uint32_t d = 0; d < t.n_dims; ++d) shape += (d ? ", " : "") + std::to_string(t.ne[d]);
    shape += "]";
    std::printf("  %-4zu %-40s %-6s %-28s %14llu %14llu\n", i, t.name.c_str(), dtype_name(t.type), shape.c_str(),
                static_cast<unsigned long long>(t.offset), static_cast<unsigned long long>(t.n_bytes));
    total += t.n_bytes;
  }
  std::printf("\n%zu tensors, %llu bytes of tensor data\n", g.tensors().size(), static_cast<unsigned long long>(total));
  return 0;
}

}  // namespace kvstash::cli
