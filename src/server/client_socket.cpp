#include "server/client_socket.h"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <string>

namespace kvstash {
namespace {

int port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

// The numeric host, spelled as httplib spells Request::remote_addr / local_addr.
std::string host_of(const sockaddr_storage& a, socklen_t len) {
  std::array<char, NI_MAXHOST> host{};
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host.data(), host.size(), nullptr, 0, NI_NUMERICHOST) != 0) return {};
  return host.data();
}

// Calls fn(fd) for every open descriptor of the process until it returns true; returns that fd.
int find_fd(const std::function<bool(int)>& fn) {
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return -1;
  const int own = ::dirfd(d);
  int found = -1;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int fd = std::atoi(e->d_name);
    if (fd != own && fn(fd)) {
      found = fd;
      break;
    }
  }
  ::closedir(d);
  return found;
}

}  // namespace

int find_client_socket(const httplib::Request& req) {
  if (req.local_port <= 0 || req.remote_port <= 0) return -1;
  return find_fd([&](int fd) {
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof local, peer_len = sizeof peer;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 || port_of(local) != req.local_port) return false;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 || port_of(peer) != req.remote_port) return false;
    return host_of(peer, peer_len) == req.remote_addr && host_of(local, local_len) == req.local_addr;
  });
}

bool client_connected(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  const int r = ::poll(&p, 1, 0);
  if (r < 0) return errno == EINTR || errno == EAGAIN;  // cannot tell: not gone
  if (r == 0) return true;
  if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) return false;
  if (p.revents & POLLIN) {  // bytes, or the end of the stream
    char c = 0;
    const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
  }
  return true;
}

bool raise_listen_backlog(int port, int backlog) {
  const int fd = find_fd([&](int fd) {
    int listening = 0;
    socklen_t n = sizeof listening;
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) != 0 || !listening) return false;
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    return ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 && port_of(local) == port;
  });
  return fd >= 0 && ::listen(fd, backlog) == 0;
}

}  // namespace kvstash
