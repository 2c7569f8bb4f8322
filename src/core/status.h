// Status and Result<T>: the error currency of kvstash.
// Owns: error codes and messages. Never throws; never aborts on bad input.
// Thread-safe: values only.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace kvstash {

enum class StatusCode {
  Ok = 0,
  InvalidArgument,
  NotFound,
  Corruption,
  Unsupported,
  ResourceExhausted,
  IO,
  Internal,
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }
  bool is_ok() const { return code_ == StatusCode::Ok; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "Corruption: gguf: ..." for humans.
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::Ok;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {StatusCode::InvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::NotFound, std::move(m)}; }
inline Status corruption(std::string m) { return {StatusCode::Corruption, std::move(m)}; }
inline Status unsupported(std::string m) { return {StatusCode::Unsupported, std::move(m)}; }
inline Status resource_exhausted(std::string m) { return {StatusCode::ResourceExhausted, std::move(m)}; }
inline Status io_error(std::string m) { return {StatusCode::IO, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::Internal, std::move(m)}; }

// Result<T>: a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}             // NOLINT(implicit)
  Result(Status status) : v_(std::move(status)) {       // NOLINT(implicit)
    assert(!std::get<Status>(v_).is_ok() && "Result built from an ok Status");
  }
  bool is_ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return is_ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace kvstash

// Propagate a non-ok Status from an expression returning Status.
#define KV_RETURN_IF_ERROR(expr)              \
  do {                                        \
    ::kvstash::Status kv_st_ = (expr);        \
    if (!kv_st_.is_ok()) return kv_st_;       \
  } while (0)

#define KV_CONCAT_INNER(a, b) a##b
#define KV_CONCAT(a, b) KV_CONCAT_INNER(a, b)
// KV_ASSIGN_OR_RETURN(auto x, f()); declares x from a Result or returns its Status.
#define KV_ASSIGN_OR_RETURN(decl, expr) KV_ASSIGN_OR_RETURN_IMPL(KV_CONCAT(kv_res_, __LINE__), decl, expr)
#define KV_ASSIGN_OR_RETURN_IMPL(tmp, decl, expr) \
  auto tmp = (expr);                              \
  if (!tmp.is_ok()) return tmp.status();          \
  decl = std::move(tmp).value()
