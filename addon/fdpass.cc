// The control socket to init (SOCK_SEQPACKET: one message per request, fds by SCM_RIGHTS)
// and the pipes of a process's stdio.
#include <fcntl.h>
#include <string.h>

#include <string>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#include "addon.h"
#include "fdmsg.h"

static const int kMaxFds = 8;

// One SEQPACKET message with up to 253 fds (SCM_RIGHTS): the byte count, or -errno.
ssize_t send_with_fds(int sock, const void *data, size_t len, const int *fds, size_t nfds) {
  if (nfds > 253) return -EINVAL;
  struct iovec iov;
  struct msghdr msg;
  FDMSG_CBUF(c, 253);
  fdmsg_init(&msg, &iov, const_cast<void *>(data), len, c.buf, nfds > 0 ? sizeof c.buf : 0);
  if (nfds > 0) fdmsg_put(&msg, fds, nfds);
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : n;
}

// send(fd, buffer, fds[]): sends one message; returns the byte count or { errno }.
Napi::Value Send(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  int fds[kMaxFds];
  int nfds = 0;
  if (info.Length() > 2 && info[2].IsArray()) {
    Napi::Array a = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length() && nfds < kMaxFds; i++) fds[nfds++] = a.Get(i).As<Napi::Number>().Int32Value();
  }
  ssize_t n = send_with_fds(fd, buf.Data(), buf.Length(), fds, (size_t)nfds);
  if (n < 0) return sys_failure(env, nullptr, (int)-n, nullptr);
  return Napi::Number::New(env, (double)n);
}

// recv(fd): undefined when nothing is waiting, null at EOF, { errno } on failure, else a
// Buffer with the message. The one fd init sends, a pty's master with MSG_STARTED (type 101),
// is the Buffer's `fd` property; any other fd received is closed.
Napi::Value Recv(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  static uint8_t data[65536];
  struct iovec iov;
  struct msghdr msg;
  FDMSG_CBUF(c, kMaxFds);
  fdmsg_init(&msg, &iov, data, sizeof data, c.buf, sizeof c.buf);
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT); while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return env.Undefined();
  if (n < 0) return sys_failure(env, nullptr, errno, nullptr);
  uint32_t type = 0;
  if (n >= 4) memcpy(&type, data, 4);
  int got[kMaxFds];
  size_t k = fdmsg_take(&msg, got, kMaxFds);
  int kept = type == 101 && k == 1 ? got[0] : -1;
  if (kept < 0)
    for (size_t i = 0; i < k; i++) close(got[i]);
  if (n == 0) {
    if (kept >= 0) close(kept);
    return env.Null();
  }
  Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(env, data, (size_t)n);
  if (kept >= 0) b.Set("fd", kept);
  return b;
}

// pipe(nonblockingRead?): [readFd, writeFd], both close-on-exec; the read end non-blocking
// when asked (the write end goes to a process in the sandbox, which expects blocking writes).
Napi::Value Pipe(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return sys_failure(env, nullptr, errno, nullptr);
  if (info.Length() > 0 && info[0].ToBoolean() && fcntl(p[0], F_SETFL, O_NONBLOCK) < 0) {
    int e = errno;
    close(p[0]), close(p[1]);
    return sys_failure(env, nullptr, e, nullptr);
  }
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set((uint32_t)0, p[0]);
  a.Set((uint32_t)1, p[1]);
  return a;
}

// readSome(fd, drain?): what a non-blocking fd has now, up to 1 MiB (the event loop then gets a
// turn): a Buffer; null at EOF; undefined when nothing is waiting; { errno } on failure. A short
// read ends a pipe's turn; with drain (a pty, whose reads give at most a few KiB each) reads go
// on until EAGAIN.
Napi::Value ReadSome(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  bool drain = info.Length() > 1 && info[1].ToBoolean();
  static const size_t kChunk = 65536, kMax = 1 << 20;
  std::string got;
  static char buf[kChunk];
  for (;;) {
    ssize_t n;
    do n = read(fd, buf, kChunk); while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) {
      if (!got.empty()) break;  // hand over what came; the error repeats on the next call
      return sys_failure(env, nullptr, errno, nullptr);
    }
    if (n == 0) {
      if (got.empty()) return env.Null();
      break;  // data first; EOF again on the next call
    }
    got.append(buf, (size_t)n);
    if ((!drain && (size_t)n < kChunk) || got.size() >= kMax) break;
  }
  if (got.empty()) return env.Undefined();
  return Napi::Buffer<char>::Copy(env, got.data(), got.size());
}

// readSmall(path): a small pseudo-file (cgroupfs, procfs) whole, up to 64 KiB, as a string;
// -errno on failure. One open/read/close with no event-loop machinery: these sit on every exec.
Napi::Value ReadSmall(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd;
  do fd = open(path.c_str(), O_RDONLY | O_CLOEXEC); while (fd < 0 && errno == EINTR);
  if (fd < 0) return Napi::Number::New(env, -errno);
  static char buf[65536];
  size_t got = 0;
  for (;;) {
    ssize_t n = read(fd, buf + got, sizeof buf - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      return Napi::Number::New(env, -e);
    }
    if (n == 0 || (got += (size_t)n) == sizeof buf) break;
  }
  close(fd);
  return Napi::String::New(env, buf, got);
}

// writeSmall(path, value): one open/write/close, as cgroupfs expects; 0 or -errno.
Napi::Value WriteSmall(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string value = info[1].As<Napi::String>().Utf8Value();
  int fd;
  do fd = open(path.c_str(), O_WRONLY | O_CLOEXEC); while (fd < 0 && errno == EINTR);
  if (fd < 0) return Napi::Number::New(env, -errno);
  ssize_t n;
  do n = write(fd, value.data(), value.size()); while (n < 0 && errno == EINTR);
  int e = n < 0 ? errno : (size_t)n != value.size() ? EIO : 0;
  close(fd);
  return Napi::Number::New(env, -e);
}

Napi::Value CloseFd(const Napi::CallbackInfo &info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd >= 0) close(fd);
  return info.Env().Undefined();
}

// ptyResize(fd, columns, rows): TIOCSWINSZ on a pty's master (the kernel sends SIGWINCH to
// the terminal's foreground process group); 0 or -errno.
Napi::Value PtyResize(const Napi::CallbackInfo &info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct winsize ws = {(unsigned short)info[2].As<Napi::Number>().Uint32Value(),
                       (unsigned short)info[1].As<Napi::Number>().Uint32Value(), 0, 0};
  int r = ioctl(fd, TIOCSWINSZ, &ws);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}
