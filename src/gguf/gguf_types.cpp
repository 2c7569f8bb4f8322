#include "gguf/gguf_types.h"

#include <cstdio>

#include "core/le.h"

namespace kvstash {

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "unknown";
}

uint32_t gguf_scalar_bytes(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
    case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
    default: return false;
  }
}

double GgufValue::array_f64(uint64_t idx) const {
  const uint8_t* p = raw.data() + idx * gguf_scalar_bytes(elem_type);
  switch (elem_type) {
    case GgufType::F32: return load_le<float>(p);
    case GgufType::F64: return load_le<double>(p);
    default: return static_cast<double>(array_i64(idx));
  }
}

int64_t GgufValue::array_i64(uint64_t idx) const {
  const uint8_t* p = raw.data() + idx * gguf_scalar_bytes(elem_type);
  switch (elem_type) {
    case GgufType::U8: case GgufType::BOOL: return load_le<uint8_t>(p);
    case GgufType::I8: return load_le<int8_t>(p);
    case GgufType::U16: return load_le<uint16_t>(p);
    case GgufType::I16: return load_le<int16_t>(p);
    case GgufType::U32: return load_le<uint32_t>(p);
    case GgufType::I32: return load_le<int32_t>(p);
    case GgufType::U64: return static_cast<int64_t>(load_le<uint64_t>(p));
    case GgufType::I64: return load_le<int64_t>(p);
    case GgufType::F32: return static_cast<int64_t>(load_le<float>(p));
    case GgufType::F64: return static_cast<int64_t>(load_le<double>(p));
    default: return 0;
  }
}

std::string GgufValue::to_display(size_t max_items) const {
  char buf[64];
  switch (type) {
    case GgufType::STRING: {
      std::string s = str.size() > 80 ? str.substr(0, 77) + "..." : str;
      std::string out = "\"";
      for (char c : s) {
        if (c == '\n') out += "\\n";
        else if (c == '"') out += "\\\"";
        else out += c;
      }
      return out + "\"";
    }
    case GgufType::BOOL: return u ? "true" : "false";
    case GgufType::F32: case GgufType::F64:
      std::snprintf(buf, sizeof buf, "%.9g", f);
      return buf;
    case GgufType::ARRAY: {
      std::string out = std::string("[") + gguf_type_name(elem_type) + " x " + std::to_string(n_elems) + "] [";
      const uint64_t n = n_elems < max_items ? n_elems : max_items;
      for (uint64_t k = 0; k < n; ++k) {
        if (k) out += ", ";
        if (elem_type == GgufType::STRING) {
          GgufValue tmp;
          tmp.type = GgufType::STRING;
          tmp.str = strs[k];
          out += tmp.to_display();
        } else if (elem_type == GgufType::ARRAY) {
          out += items[k].to_display(max_items);
        } else if (elem_type == GgufType::F32 || elem_type == GgufType::F64) {
          std::snprintf(buf, sizeof buf, "%.6g", array_f64(k));
          out += buf;
        } else {
          out += std::to_string(array_i64(k));
        }
      }
      if (n < n_elems) out += ", ...";
      return out + "]";
    }
    default:
      if (type == GgufType::I8 || type == GgufType::I16 || type == GgufType::I32 || type == GgufType::I64)
        return std::to_string(i);
      return std::to_string(u);
  }
}

}  // namespace kvstash
