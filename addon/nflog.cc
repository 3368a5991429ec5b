// NFLOG (nfnetlink_log) reader: packets a sandbox's forward chain refused are logged by
// nftables (`log group N prefix "<reason>"`, rate-limited in the rule) and read here, so the
// host can report each refusal as a violation (lib/network/nflog.ts). One group per hutch
// process (a group binds to one socket); only the first 64 bytes of each packet are copied.
// Also originalDst, for the ask listener (lib/network/sni-proxy.ts).
// Failures are data, { errno, step }.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <endian.h>

#include <algorithm>

#include <string>
#include <vector>

#include "addon.h"
#include "netlink_msg.h"
#include "nflog.h"

namespace {

namespace nl = hutch_netlink;

Napi::Object failure(Napi::Env env, const char *step, int err) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("errno", Napi::Number::New(env, err));
  o.Set("step", Napi::String::New(env, step));
  return o;
}

// One NFULNL_MSG_CONFIG request with one attribute, acked; 0 or a negative errno.
int config(int fd, uint16_t group, uint16_t type, const void *data, size_t len) {
  alignas(NLMSG_ALIGNTO) char buf[128];
  memset(buf, 0, sizeof buf);
  nlmsghdr *h = reinterpret_cast<nlmsghdr *>(buf);
  h->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
  h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  h->nlmsg_seq = 1;
  nfgenmsg *g = reinterpret_cast<nfgenmsg *>(NLMSG_DATA(h));
  g->nfgen_family = AF_UNSPEC;
  g->version = NFNETLINK_V0;
  g->res_id = htons(group);
  nlattr *a = reinterpret_cast<nlattr *>(buf + NLMSG_SPACE(sizeof(nfgenmsg)));
  a->nla_type = type;
  a->nla_len = NLA_HDRLEN + len;
  memcpy(reinterpret_cast<char *>(a) + NLA_HDRLEN, data, len);
  h->nlmsg_len = NLMSG_SPACE(sizeof(nfgenmsg)) + NLA_ALIGN(a->nla_len);
  if (send(fd, buf, h->nlmsg_len, 0) < 0) return -errno;
  alignas(NLMSG_ALIGNTO) char ack[1024];
  ssize_t n = recv(fd, ack, sizeof ack, 0);
  if (n < 0) return -errno;
  for (nlmsghdr *r = reinterpret_cast<nlmsghdr *>(ack); NLMSG_OK(r, static_cast<unsigned>(n)); r = NLMSG_NEXT(r, n)) {
    if (r->nlmsg_type == NLMSG_ERROR) return reinterpret_cast<nlmsgerr *>(NLMSG_DATA(r))->error;
  }
  return 0;
}

// nflogOpen(group): a non-blocking socket bound to the group, packets copied up to 64 bytes,
// each sent at once (queue threshold 1). A group another socket holds fails with EPERM/EBUSY.
Napi::Value NflogOpen(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint16_t group = static_cast<uint16_t>(info[0].As<Napi::Number>().Uint32Value());
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) return failure(env, "socket", errno);
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  if (bind(fd, reinterpret_cast<sockaddr *>(&sa), sizeof sa) < 0) {
    int e = errno;
    close(fd);
    return failure(env, "bind", e);
  }
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int rcvbuf = 1 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  int one = 1;
  // A full buffer drops records (counted by the caller as lost), never blocks the kernel.
  setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
  nfulnl_msg_config_cmd cmd{NFULNL_CFG_CMD_BIND};
  int r = config(fd, group, NFULA_CFG_CMD, &cmd, sizeof cmd);
  if (r == 0) {
    nfulnl_msg_config_mode mode{};
    mode.copy_range = htonl(64);
    mode.copy_mode = NFULNL_COPY_PACKET;
    r = config(fd, group, NFULA_CFG_MODE, &mode, sizeof mode);
  }
  if (r == 0) {
    uint32_t qthresh = htonl(1);
    r = config(fd, group, NFULA_CFG_QTHRESH, &qthresh, sizeof qthresh);
  }
  if (r != 0) {
    close(fd);
    return failure(env, "config", -r);
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return Napi::Number::New(env, fd);
}

// nflogRead(fd): every record pending, [{ prefix, src, dst, proto, dport }]; stops at EAGAIN.
Napi::Value NflogRead(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Array out = Napi::Array::New(env);
  uint32_t count = 0;
  alignas(NLMSG_ALIGNTO) static char buf[65536];
  for (int rounds = 0; rounds < 64; rounds++) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) break;
    hutch_netlink::for_each_msg(buf, n, [&](nlmsghdr *h) {
      if (h->nlmsg_type != ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)) return;
      std::string prefix;
      const unsigned char *payload = nullptr;
      size_t plen = 0;
      hutch_netlink::for_each_nfattr(h, [&](uint16_t t, const char *d, size_t dl) {
        if (t == NFULA_PREFIX) prefix.assign(d, strnlen(d, dl));
        if (t == NFULA_PAYLOAD) {
          payload = reinterpret_cast<const unsigned char *>(d);
          plen = dl;
        }
      });
      if (payload == nullptr || plen < 20 || (payload[0] >> 4) != 4) return;
      size_t ihl = (payload[0] & 0xf) * 4;
      char src[INET_ADDRSTRLEN], dst[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, payload + 12, src, sizeof src);
      inet_ntop(AF_INET, payload + 16, dst, sizeof dst);
      Napi::Object o = Napi::Object::New(env);
      o.Set("prefix", Napi::String::New(env, prefix));
      o.Set("src", Napi::String::New(env, src));
      o.Set("dst", Napi::String::New(env, dst));
      o.Set("proto", Napi::Number::New(env, payload[9]));
      if ((payload[9] == 6 || payload[9] == 17) && plen >= ihl + 4) {
        o.Set("dport", Napi::Number::New(env, (payload[ihl + 2] << 8) | payload[ihl + 3]));
      } else {
        o.Set("dport", env.Null());
      }
      out.Set(count++, o);
    });
  }
  return out;
}

// originalDst(fd): where a TCP connection that nftables redirected to hutch's proxy was going
// (SO_ORIGINAL_DST), { address, port }, or a failure.
Napi::Value OriginalDst(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  sockaddr_in sa{};
  socklen_t len = sizeof sa;
  if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &sa, &len) < 0) return failure(env, "getsockopt", errno);
  char addr[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &sa.sin_addr, addr, sizeof addr);
  Napi::Object o = Napi::Object::New(env);
  o.Set("address", Napi::String::New(env, addr));
  o.Set("port", Napi::Number::New(env, ntohs(sa.sin_port)));
  return o;
}

// conntrackForget(src, sport, dst, dport): deletes the conntrack entry of the TCP connection
// src:sport -> dst:dport (its original direction; IPCTNL_MSG_CT_DELETE), after the ask listener
// has reset a connection it refused. Otherwise the entry lingers closed for ~10 s, still
// carrying its redirect to the listener, and a new SYN from the same source port reopens it
// (conntrack lets a closed connection be reopened) instead of being judged as new by the
// kernel's rules. true (ENOENT included: already gone), or a failure.
int ct_fd = -1;
Napi::Value ConntrackForget(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  in_addr src{}, dst{};
  if (inet_pton(AF_INET, nl::arg_string(info[0]).c_str(), &src) != 1 || inet_pton(AF_INET, nl::arg_string(info[2]).c_str(), &dst) != 1)
    return failure(env, "address", EINVAL);
  uint16_t sport = htons(static_cast<uint16_t>(info[1].As<Napi::Number>().Uint32Value()));
  uint16_t dport = htons(static_cast<uint16_t>(info[3].As<Napi::Number>().Uint32Value()));
  if (ct_fd < 0) ct_fd = nl::nl_open(NETLINK_NETFILTER);
  if (ct_fd < 0) return failure(env, "socket", -ct_fd);
  nl::nl_req r;
  nl::nfgen_begin(r, NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, 0, AF_INET);
  rtattr *tuple = nl::nest_begin(r, CTA_TUPLE_ORIG | NLA_F_NESTED);
  rtattr *ip = nl::nest_begin(r, CTA_TUPLE_IP | NLA_F_NESTED);
  nl::attr_put(r, CTA_IP_V4_SRC, &src, sizeof src);
  nl::attr_put(r, CTA_IP_V4_DST, &dst, sizeof dst);
  nl::nest_end(r, ip);
  rtattr *proto = nl::nest_begin(r, CTA_TUPLE_PROTO | NLA_F_NESTED);
  uint8_t tcp = IPPROTO_TCP;
  nl::attr_put(r, CTA_PROTO_NUM, &tcp, sizeof tcp);
  nl::attr_put(r, CTA_PROTO_SRC_PORT, &sport, sizeof sport);
  nl::attr_put(r, CTA_PROTO_DST_PORT, &dport, sizeof dport);
  nl::nest_end(r, proto);
  nl::nest_end(r, tuple);
  nl::nl_result res = nl::nl_talk(ct_fd, r);
  if (res.err != 0 && res.err != -ENOENT) return failure(env, "ctdelete", -res.err);
  return Napi::Boolean::New(env, true);
}

int counter_fd = -1;

// Walks the attributes in [p, p + len) for `type`; its payload and length, or null.
const char *find_attr(const char *p, int len, uint16_t type, size_t *out_len) {
  const nlattr *a = reinterpret_cast<const nlattr *>(p);
  while (len >= static_cast<int>(NLA_HDRLEN) && a->nla_len >= NLA_HDRLEN && a->nla_len <= len) {
    if ((a->nla_type & NLA_TYPE_MASK) == type) {
      *out_len = a->nla_len - NLA_HDRLEN;
      return reinterpret_cast<const char *>(a) + NLA_HDRLEN;
    }
    len -= NLA_ALIGN(a->nla_len);
    a = reinterpret_cast<const nlattr *>(reinterpret_cast<const char *>(a) + NLA_ALIGN(a->nla_len));
  }
  return nullptr;
}

// nftCounter(table, name): the packets of a named counter of an inet table (NFT_MSG_GETOBJ,
// one netlink round trip on the JS thread, no nft process), or a failure. lib/network reads a
// sandbox's refused-packet counter at each exec's end: what the log's rate limit left out.
Napi::Value NftCounter(const Napi::CallbackInfo &info) {

  Napi::Env env = info.Env();
  std::string table = nl::arg_string(info[0]), name = nl::arg_string(info[1]);
  if (counter_fd < 0) counter_fd = nl::nl_open(NETLINK_NETFILTER);
  if (counter_fd < 0) return failure(env, "socket", -counter_fd);
  nl::nl_req r;
  nl::nfgen_begin(r, NFNL_SUBSYS_NFTABLES, NFT_MSG_GETOBJ, 0, NFPROTO_INET);
  nl::attr_str(r, NFTA_OBJ_TABLE, table.c_str());
  nl::attr_str(r, NFTA_OBJ_NAME, name.c_str());
  nl::attr_u32(r, NFTA_OBJ_TYPE, htonl(NFT_OBJECT_COUNTER));
  std::vector<char> reply;
  nl::nl_result res = nl::nl_talk(counter_fd, r, &reply);
  if (res.err != 0) return failure(env, "getobj", -res.err);
  if (reply.size() < NLMSG_SPACE(sizeof(nfgenmsg))) return failure(env, "getobj", EBADMSG);
  const nlmsghdr *h = reinterpret_cast<const nlmsghdr *>(reply.data());
  const char *attrs = reply.data() + NLMSG_SPACE(sizeof(nfgenmsg));
  int alen = static_cast<int>(std::min<size_t>(h->nlmsg_len, reply.size())) - static_cast<int>(NLMSG_SPACE(sizeof(nfgenmsg)));
  size_t dlen = 0, plen = 0;
  const char *data = find_attr(attrs, alen, NFTA_OBJ_DATA, &dlen);
  const char *packets = data ? find_attr(data, static_cast<int>(dlen), NFTA_COUNTER_PACKETS, &plen) : nullptr;
  if (packets == nullptr || plen != 8) return failure(env, "getobj", EBADMSG);
  uint64_t be;
  memcpy(&be, packets, 8);
  return Napi::Number::New(env, static_cast<double>(be64toh(be)));
}

// Appends one attribute (header + payload, padded) at `off` of `buf`; returns the new offset.
size_t put_attr(char *buf, size_t off, uint16_t type, const void *data, size_t len) {
  nlattr *a = reinterpret_cast<nlattr *>(buf + off);
  a->nla_type = type;
  a->nla_len = static_cast<uint16_t>(NLA_HDRLEN + len);
  if (len > 0) memcpy(buf + off + NLA_HDRLEN, data, len);
  memset(buf + off + NLA_HDRLEN + len, 0, NLA_ALIGN(a->nla_len) - a->nla_len);
  return off + NLA_ALIGN(a->nla_len);
}

size_t put_batch_marker(char *buf, size_t off, uint16_t type, uint32_t seq) {
  nlmsghdr *h = reinterpret_cast<nlmsghdr *>(buf + off);
  h->nlmsg_len = NLMSG_SPACE(sizeof(nfgenmsg));
  h->nlmsg_type = type;
  h->nlmsg_flags = NLM_F_REQUEST;
  h->nlmsg_seq = seq;
  h->nlmsg_pid = 0;
  nfgenmsg *g = reinterpret_cast<nfgenmsg *>(NLMSG_DATA(h));
  g->nfgen_family = AF_UNSPEC;
  g->version = NFNETLINK_V0;
  g->res_id = htons(NFNL_SUBSYS_NFTABLES);
  return off + NLMSG_ALIGN(h->nlmsg_len);
}

// nftAddElements(table, set, addresses): adds IPv4 addresses to a set of an inet table in one
// nf_tables batch (NFT_MSG_NEWSETELEM, existing elements are no error): true, or a failure.
// What `nft add element` does, without a process (~2 ms, more on a loaded host) on the path
// of a sandbox's first connection to a freshly resolved name.
Napi::Value NftAddElements(const Napi::CallbackInfo &info) {

  Napi::Env env = info.Env();
  std::string table = nl::arg_string(info[0]), set = nl::arg_string(info[1]);
  Napi::Array list = info[2].As<Napi::Array>();
  if (table.size() > 200 || set.size() > 200 || list.Length() == 0 || list.Length() > 256) return failure(env, "args", EINVAL);
  std::vector<in_addr> addrs;
  for (uint32_t i = 0; i < list.Length(); i++) {
    in_addr a;
    std::string s = nl::arg_string(list.Get(i));
    if (inet_pton(AF_INET, s.c_str(), &a) != 1) return failure(env, "args", EINVAL);
    addrs.push_back(a);
  }
  if (counter_fd < 0) counter_fd = nl::nl_open(NETLINK_NETFILTER);
  if (counter_fd < 0) return failure(env, "socket", -counter_fd);
  static uint32_t seq = 0x48000000;
  uint32_t s0 = seq += 3;
  alignas(NLMSG_ALIGNTO) char buf[16384];
  memset(buf, 0, sizeof buf);
  size_t off = put_batch_marker(buf, 0, NFNL_MSG_BATCH_BEGIN, s0);
  size_t msg = off;
  nlmsghdr *h = reinterpret_cast<nlmsghdr *>(buf + msg);
  h->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM;
  h->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
  h->nlmsg_seq = s0 + 1;
  nfgenmsg *g = reinterpret_cast<nfgenmsg *>(NLMSG_DATA(h));
  g->nfgen_family = NFPROTO_INET;
  g->version = NFNETLINK_V0;
  off = msg + NLMSG_SPACE(sizeof(nfgenmsg));
  off = put_attr(buf, off, NFTA_SET_ELEM_LIST_TABLE, table.c_str(), table.size() + 1);
  off = put_attr(buf, off, NFTA_SET_ELEM_LIST_SET, set.c_str(), set.size() + 1);
  size_t elements = off;
  off = put_attr(buf, off, NLA_F_NESTED | NFTA_SET_ELEM_LIST_ELEMENTS, nullptr, 0);
  for (const in_addr &a : addrs) {
    size_t elem = off;
    off = put_attr(buf, off, NLA_F_NESTED | NFTA_LIST_ELEM, nullptr, 0);
    size_t key = off;
    off = put_attr(buf, off, NLA_F_NESTED | NFTA_SET_ELEM_KEY, nullptr, 0);
    off = put_attr(buf, off, NFTA_DATA_VALUE, &a, sizeof a);
    reinterpret_cast<nlattr *>(buf + key)->nla_len = static_cast<uint16_t>(off - key);
    reinterpret_cast<nlattr *>(buf + elem)->nla_len = static_cast<uint16_t>(off - elem);
  }
  reinterpret_cast<nlattr *>(buf + elements)->nla_len = static_cast<uint16_t>(off - elements);
  h->nlmsg_len = static_cast<uint32_t>(off - msg);
  off = put_batch_marker(buf, off, NFNL_MSG_BATCH_END, s0 + 2);
  sockaddr_nl to{};
  to.nl_family = AF_NETLINK;
  ssize_t n;
  do n = sendto(counter_fd, buf, off, 0, reinterpret_cast<sockaddr *>(&to), sizeof to); while (n < 0 && errno == EINTR);
  if (n < 0) return failure(env, "sendto", errno);
  // nfnetlink runs the batch inside sendto: its acks are queued by now (never wait for more).
  alignas(NLMSG_ALIGNTO) char ack[8192];
  for (int tries = 0; tries < 16; tries++) {
    do n = recv(counter_fd, ack, sizeof ack, MSG_DONTWAIT); while (n < 0 && errno == EINTR);
    if (n < 0) return failure(env, "recv", errno);
    for (nlmsghdr *r = reinterpret_cast<nlmsghdr *>(ack); NLMSG_OK(r, static_cast<unsigned>(n)); r = NLMSG_NEXT(r, n)) {
      // The element message's ack, or an error on any message of the batch (its begin, say).
      if (r->nlmsg_type != NLMSG_ERROR || r->nlmsg_seq < s0 || r->nlmsg_seq > s0 + 2) continue;
      int err = reinterpret_cast<nlmsgerr *>(NLMSG_DATA(r))->error;
      if (err != 0) return failure(env, "newsetelem", -err);
      if (r->nlmsg_seq == s0 + 1) return Napi::Boolean::New(env, true);
    }
  }
  return failure(env, "recv", ETIMEDOUT);
}

}  // namespace

void InitNflog(Napi::Env env, Napi::Object exports) {
  exports.Set("nflogOpen", Napi::Function::New(env, NflogOpen));
  exports.Set("nflogRead", Napi::Function::New(env, NflogRead));
  exports.Set("originalDst", Napi::Function::New(env, OriginalDst));
  exports.Set("conntrackForget", Napi::Function::New(env, ConntrackForget));
  exports.Set("nftCounter", Napi::Function::New(env, NftCounter));
  exports.Set("nftAddElements", Napi::Function::New(env, NftAddElements));
}
