// ClientSocket: the socket an HTTP request arrived on, and whether its client is still there.
// cpp-httplib 0.11 (Debian 12) gives a handler neither its socket nor a "connection closed"
// check (is_connection_closed came in 0.14), so the socket is found by its addresses: the one
// descriptor of this process whose local and peer addresses are the request's. A TCP
// connection's address pair is unique, and httplib keeps the descriptor open until the handler
// and any streamed response are done — callers must not use it after that.
// Never reads or writes data (at most a one-byte MSG_PEEK). Thread-safe: no state.
#pragma once

#include <httplib.h>

namespace kvstash {

// The descriptor of req's connection, or -1 if none matches. Costs a directory scan of
// /proc/self/fd and a getsockname per open descriptor (microseconds; once per request).
int find_client_socket(const httplib::Request& req);

// False once the client has closed or reset its connection (end of stream, RDHUP, HUP or an
// error); true while it is open, including when it has sent more bytes (a pipelined request).
// A client that shuts down only its sending side counts as gone, as in cpp-httplib's own
// is_socket_alive. Non-blocking: one poll() with a zero timeout.
bool client_connected(int fd);

// Raises the accept queue of the socket listening on `port` to `backlog` connections (httplib
// listens with a backlog of 5, so a burst of clients overflows it and their SYNs are dropped and
// retried a second later). Linux applies a second listen() to a listening socket. False when no
// listening socket on that port was found.
bool raise_listen_backlog(int port, int backlog);

}  // namespace kvstash
