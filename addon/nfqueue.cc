// The name check of HTTP/TLS connections without terminating TCP (lib/network/nfqueue.ts):
// the kernel forwards each connection itself; only the first data segments of a new one are
// held in this process's netfilter queue (nfnetlink_queue), read here, parsed in JS (SNI or
// Host), then released or refused by a verdict that sets the packet mark and repeats the
// hook (NF_REPEAT): the queue's own table turns the mark into "checked" (a conntrack mark,
// later packets skip the queue) or a TCP reset.
//
// The queue's table (`ip hutchq<N>`) is made here by netlink because its queueing rule is
// the xtables NFQUEUE target in an nft rule (a compat expression, what iptables-nft writes):
// this kernel family lacks nft's own `queue` expression (CONFIG_NFT_QUEUE), and compat
// expressions are refused in `inet` tables. The table is owned by this process's socket
// (NFT_TABLE_F_OWNER): the kernel deletes it when the process dies, and `inet hutch` then
// resets what would have been queued (fail closed, nat.ts). Failures are data, { errno, step }.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nf_tables_compat.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netfilter/xt_NFQUEUE.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "addon.h"
#include "netlink_msg.h"

namespace {

namespace nl = hutch_netlink;

// queue number -> the socket owning its table (closing it deletes the table).
std::map<uint32_t, int> table_fds;

uint32_t be(uint32_t v) { return htonl(v); }

// One expression of a rule: { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }, `fill` writing the data.
template <typename F>
void expr(nl::nl_req &r, const char *name, F fill) {
  rtattr *e = nl::nest_begin(r, NLA_F_NESTED | NFTA_LIST_ELEM);
  nl::attr_str(r, NFTA_EXPR_NAME, name);
  rtattr *d = nl::nest_begin(r, NLA_F_NESTED | NFTA_EXPR_DATA);
  fill();
  nl::nest_end(r, d);
  nl::nest_end(r, e);
}

void data_value(nl::nl_req &r, uint16_t type, const void *p, size_t n) {
  rtattr *d = nl::nest_begin(r, NLA_F_NESTED | type);
  nl::attr_put(r, NFTA_DATA_VALUE, p, n);
  nl::nest_end(r, d);
}

// reg1 = ct mark / meta mark / ct direction
void load(nl::nl_req &r, bool ct, uint32_t key) {
  expr(r, ct ? "ct" : "meta", [&]() {
    nl::attr_u32(r, ct ? uint16_t{NFTA_CT_KEY} : uint16_t{NFTA_META_KEY}, be(key));
    nl::attr_u32(r, ct ? uint16_t{NFTA_CT_DREG} : uint16_t{NFTA_META_DREG}, be(NFT_REG_1));
  });
}

// reg1 <op> value (host byte order, as marks are kept in registers)
void cmp(nl::nl_req &r, uint32_t op, const void *value, size_t n) {
  expr(r, "cmp", [&]() {
    nl::attr_u32(r, NFTA_CMP_SREG, be(NFT_REG_1));
    nl::attr_u32(r, NFTA_CMP_OP, be(op));
    data_value(r, NFTA_CMP_DATA, value, n);
  });
}

// ct mark / meta mark = value
void set(nl::nl_req &r, bool ct, uint32_t value) {
  expr(r, "immediate", [&]() {
    nl::attr_u32(r, NFTA_IMMEDIATE_DREG, be(NFT_REG_1));
    data_value(r, NFTA_IMMEDIATE_DATA, &value, sizeof value);
  });
  expr(r, ct ? "ct" : "meta", [&]() {
    nl::attr_u32(r, ct ? uint16_t{NFTA_CT_KEY} : uint16_t{NFTA_META_KEY}, be(ct ? uint32_t{NFT_CT_MARK} : uint32_t{NFT_META_MARK}));
    nl::attr_u32(r, ct ? uint16_t{NFTA_CT_SREG} : uint16_t{NFTA_META_SREG}, be(NFT_REG_1));
  });
}

void accept(nl::nl_req &r) {
  expr(r, "immediate", [&]() {
    nl::attr_u32(r, NFTA_IMMEDIATE_DREG, be(NFT_REG_VERDICT));
    rtattr *d = nl::nest_begin(r, NLA_F_NESTED | NFTA_IMMEDIATE_DATA);
    rtattr *v = nl::nest_begin(r, NLA_F_NESTED | NFTA_DATA_VERDICT);
    nl::attr_u32(r, NFTA_VERDICT_CODE, be(NF_ACCEPT));
    nl::nest_end(r, v);
    nl::nest_end(r, d);
  });
}

template <typename F>
void rule(nl::nl_req &r, const std::string &table, F body) {
  if (!nl::nfgen_begin(r, NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, NFPROTO_IPV4)) return;
  nl::attr_str(r, NFTA_RULE_TABLE, table.c_str());
  nl::attr_str(r, NFTA_RULE_CHAIN, "fwd");
  rtattr *list = nl::nest_begin(r, NLA_F_NESTED | NFTA_RULE_EXPRESSIONS);
  body();
  nl::nest_end(r, list);
}

// nfqTable(queue, { pending, checked, allow, refuse, pass }): makes `ip hutchq<queue>`, owned
// by a socket of this process, with one chain on the forward hook just before `inet hutch`'s
// (priority -1):
//   ct mark != pending                      accept  (every other packet: one compare)
//   meta mark == allow   ct mark set checked; meta mark set 0; accept
//   meta mark == refuse  meta mark set 0; reject with tcp reset
//   meta mark == pass    accept                  (a segment without data; inet hutch clears the mark)
//   ct direction original                   NFQUEUE num <queue> (no bypass: unread = dropped)
// true, or a failure ({ errno, step, detail }).
Napi::Value NfqTable(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t queue = info[0].As<Napi::Number>().Uint32Value();
  Napi::Object m = info[1].As<Napi::Object>();
  uint32_t pending = m.Get("pending").As<Napi::Number>().Uint32Value();
  uint32_t checked = m.Get("checked").As<Napi::Number>().Uint32Value();
  uint32_t allow = m.Get("allow").As<Napi::Number>().Uint32Value();
  uint32_t refuse = m.Get("refuse").As<Napi::Number>().Uint32Value();
  uint32_t pass = m.Get("pass").As<Napi::Number>().Uint32Value();
  if (queue > 0xffff || table_fds.count(queue)) return nl::failure(env, "args", EINVAL, "");
  int fd = nl::nl_open(NETLINK_NETFILTER);
  if (fd < 0) return nl::failure(env, "socket", -fd, "");
  char name[32];
  snprintf(name, sizeof name, "hutchq%u", queue);
  std::string table = name;
  nl::nl_req r;
  nl::nft_batch_marker(r, NFNL_MSG_BATCH_BEGIN);
  nl::nfgen_begin(r, NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, NFPROTO_IPV4);
  nl::attr_str(r, NFTA_TABLE_NAME, name);
  nl::attr_u32(r, NFTA_TABLE_FLAGS, be(NFT_TABLE_F_OWNER));
  nl::nfgen_begin(r, NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWCHAIN, NLM_F_CREATE, NFPROTO_IPV4);
  nl::attr_str(r, NFTA_CHAIN_TABLE, name);
  nl::attr_str(r, NFTA_CHAIN_NAME, "fwd");
  rtattr *hook = nl::nest_begin(r, NLA_F_NESTED | NFTA_CHAIN_HOOK);
  nl::attr_u32(r, NFTA_HOOK_HOOKNUM, be(NF_INET_FORWARD));
  nl::attr_u32(r, NFTA_HOOK_PRIORITY, be(static_cast<uint32_t>(-1)));
  nl::nest_end(r, hook);
  nl::attr_u32(r, NFTA_CHAIN_POLICY, be(NF_ACCEPT));
  nl::attr_str(r, NFTA_CHAIN_TYPE, "filter");
  rule(r, table, [&]() {
    load(r, true, NFT_CT_MARK);
    cmp(r, NFT_CMP_NEQ, &pending, 4);
    accept(r);
  });
  rule(r, table, [&]() {
    load(r, false, NFT_META_MARK);
    cmp(r, NFT_CMP_EQ, &allow, 4);
    set(r, true, checked);
    set(r, false, 0);
    accept(r);
  });
  rule(r, table, [&]() {
    load(r, false, NFT_META_MARK);
    cmp(r, NFT_CMP_EQ, &refuse, 4);
    set(r, false, 0);
    expr(r, "reject", [&]() { nl::attr_u32(r, NFTA_REJECT_TYPE, be(NFT_REJECT_TCP_RST)); });
  });
  rule(r, table, [&]() {
    load(r, false, NFT_META_MARK);
    cmp(r, NFT_CMP_EQ, &pass, 4);
    accept(r);
  });
  rule(r, table, [&]() {
    load(r, true, NFT_CT_DIRECTION);
    uint8_t original = 0;  // IP_CT_DIR_ORIGINAL
    cmp(r, NFT_CMP_EQ, &original, 1);
    expr(r, "target", [&]() {
      nl::attr_str(r, NFTA_TARGET_NAME, "NFQUEUE");
      nl::attr_u32(r, NFTA_TARGET_REV, be(3));
      alignas(8) char buf[8] = {};
      xt_NFQ_info_v3 q{};
      q.queuenum = static_cast<uint16_t>(queue);
      q.queues_total = 1;
      q.flags = 0;  // never NFQ_FLAG_BYPASS: with no reader, queued packets are dropped
      memcpy(buf, &q, sizeof q);
      nl::attr_put(r, NFTA_TARGET_INFO, buf, sizeof buf);
    });
  });
  nl::nft_batch_marker(r, NFNL_MSG_BATCH_END);
  nl::nl_result res = nl::nl_talk(fd, r);
  if (res.err != 0) {
    close(fd);
    static const char *const steps[] = {"batch", "newtable", "newchain", "rule skip", "rule allow", "rule refuse", "rule pass", "rule queue", "batch"};
    return nl::failure(env, steps[res.index < 0 || res.index > 8 ? 0 : res.index], -res.err, res.detail);
  }
  table_fds[queue] = fd;
  return Napi::Boolean::New(env, true);
}

// One NFQNL_MSG_CONFIG request to queue `queue` with the attributes in `fill`, acked: 0 or -errno.
template <typename F>
int config(int fd, uint32_t queue, F fill) {
  nl::nl_req r;
  nl::nfgen_begin(r, NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG, 0, AF_UNSPEC, static_cast<uint16_t>(queue));
  fill(r);
  return nl::nl_talk(fd, r).err;
}

// nfqOpen(queue): a non-blocking socket bound to the queue, whole packets copied (up to 64 KiB,
// GSO packets unsegmented), up to 4096 held. A queue another socket holds fails (EBUSY).
Napi::Value NfqOpen(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t queue = info[0].As<Napi::Number>().Uint32Value();
  if (queue > 0xffff) return nl::failure(env, "args", EINVAL, "");
  int fd = nl::nl_open(NETLINK_NETFILTER);
  if (fd < 0) return nl::failure(env, "socket", -fd, "");
  int rcvbuf = 8 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) == 0 || setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  int one = 1;
  // A full buffer drops the packet (the sender retransmits), never blocks the kernel.
  setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
  const char *step = "bind";
  int err = config(fd, queue, [&](nl::nl_req &r) {
    nfqnl_msg_config_cmd cmd{};
    cmd.command = NFQNL_CFG_CMD_BIND;
    nl::attr_put(r, NFQA_CFG_CMD, &cmd, sizeof cmd);
  });
  if (err == 0) {
    step = "mode";
    err = config(fd, queue, [&](nl::nl_req &r) {
      nfqnl_msg_config_params p{};
      p.copy_range = htonl(0xffff);
      p.copy_mode = NFQNL_COPY_PACKET;
      nl::attr_put(r, NFQA_CFG_PARAMS, &p, sizeof p);
      nl::attr_u32(r, NFQA_CFG_QUEUE_MAXLEN, be(4096));
      nl::attr_u32(r, NFQA_CFG_MASK, be(NFQA_CFG_F_GSO));
      nl::attr_u32(r, NFQA_CFG_FLAGS, be(NFQA_CFG_F_GSO));
    });
  }
  if (err != 0) {
    close(fd);
    return nl::failure(env, step, -err, "");
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return Napi::Number::New(env, fd);
}

// nfqRead(fd): every packet pending, [{ id, src, dst, sport, dport, seq, flags, data }]:
// IPv4/TCP only (anything else is returned with proto != 6 and no data, to be let through);
// `data` is the TCP payload (a copy). Stops at EAGAIN.
Napi::Value NfqRead(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Array out = Napi::Array::New(env);
  uint32_t count = 0;
  static std::vector<char> buf(256 * 1024);
  for (int rounds = 0; rounds < 64; rounds++) {
    ssize_t n = recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n <= 0) break;
    nl::for_each_msg(buf.data(), n, [&](nlmsghdr *h) {
      if (h->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET) || h->nlmsg_len < NLMSG_SPACE(sizeof(nfgenmsg))) return;
      uint32_t id = 0;
      bool have_id = false;
      const unsigned char *p = nullptr;
      size_t plen = 0;
      nl::for_each_nfattr(h, [&](uint16_t t, const char *d, size_t dl) {
        if (t == NFQA_PACKET_HDR && dl >= sizeof(nfqnl_msg_packet_hdr)) {
          id = ntohl(reinterpret_cast<const nfqnl_msg_packet_hdr *>(d)->packet_id);
          have_id = true;
        }
        if (t == NFQA_PAYLOAD) {
          p = reinterpret_cast<const unsigned char *>(d);
          plen = dl;
        }
      });
      if (!have_id) return;
      Napi::Object o = Napi::Object::New(env);
      o.Set("id", Napi::Number::New(env, id));
      size_t ihl = p && plen >= 20 ? (p[0] & 0xf) * 4u : 0;
      bool tcp = p && plen >= 20 && (p[0] >> 4) == 4 && ihl >= 20 && p[9] == 6 && plen >= ihl + 20;
      size_t doff = tcp ? (p[ihl + 12] >> 4) * 4u : 0;
      // Total length from the IP header (a GSO packet's may be 0: then what was copied).
      size_t total = tcp ? ((p[2] << 8) | p[3]) : 0;
      if (total == 0 || total > plen) total = plen;
      if (!tcp || doff < 20 || ihl + doff > total) {
        o.Set("proto", Napi::Number::New(env, p && plen >= 20 ? p[9] : 0));
        out.Set(count++, o);
        return;
      }
      char src[INET_ADDRSTRLEN], dst[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, p + 12, src, sizeof src);
      inet_ntop(AF_INET, p + 16, dst, sizeof dst);
      const unsigned char *t = p + ihl;
      o.Set("proto", Napi::Number::New(env, 6));
      o.Set("src", Napi::String::New(env, src));
      o.Set("dst", Napi::String::New(env, dst));
      o.Set("sport", Napi::Number::New(env, (t[0] << 8) | t[1]));
      o.Set("dport", Napi::Number::New(env, (t[2] << 8) | t[3]));
      o.Set("seq", Napi::Number::New(env, (static_cast<uint32_t>(t[4]) << 24) | (t[5] << 16) | (t[6] << 8) | t[7]));
      o.Set("flags", Napi::Number::New(env, t[13]));
      o.Set("data", Napi::Buffer<char>::Copy(env, reinterpret_cast<const char *>(t + doff), total - ihl - doff));
      out.Set(count++, o);
    });
  }
  return out;
}

// nfqVerdict(fd, queue, id, verdict, mark): NF_ACCEPT (1), NF_DROP (0) or NF_REPEAT (4), with
// the packet mark set when `mark` is a number. Not acked (a stale id is only logged by the
// kernel as an error message on the socket, which nfqRead skips): true, or a failure.
Napi::Value NfqVerdict(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint32_t queue = info[1].As<Napi::Number>().Uint32Value();
  uint32_t id = info[2].As<Napi::Number>().Uint32Value();
  uint32_t verdict = info[3].As<Napi::Number>().Uint32Value();
  nl::nl_req r;
  nl::nfgen_begin(r, NFNL_SUBSYS_QUEUE, NFQNL_MSG_VERDICT, 0, AF_UNSPEC, static_cast<uint16_t>(queue));
  r.cur->nlmsg_flags = NLM_F_REQUEST;
  nfqnl_msg_verdict_hdr v{};
  v.verdict = htonl(verdict);
  v.id = htonl(id);
  nl::attr_put(r, NFQA_VERDICT_HDR, &v, sizeof v);
  if (info[4].IsNumber()) nl::attr_u32(r, NFQA_MARK, be(info[4].As<Napi::Number>().Uint32Value()));
  sockaddr_nl to{};
  to.nl_family = AF_NETLINK;
  ssize_t n;
  do n = sendto(fd, r.buf, r.len, 0, reinterpret_cast<sockaddr *>(&to), sizeof to); while (n < 0 && errno == EINTR);
  if (n < 0) return nl::failure(env, "sendto", errno, "");
  return Napi::Boolean::New(env, true);
}

// nfqClose(fd, queue): closes the queue's socket (held packets are dropped by the kernel) and
// the socket owning its table (the kernel deletes the table).
Napi::Value NfqClose(const Napi::CallbackInfo &info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint32_t queue = info[1].As<Napi::Number>().Uint32Value();
  auto it = table_fds.find(queue);
  if (it != table_fds.end()) {
    close(it->second);
    table_fds.erase(it);
  }
  if (fd >= 0) close(fd);
  return info.Env().Undefined();
}

}  // namespace

void InitNfqueue(Napi::Env env, Napi::Object exports) {
  exports.Set("nfqTable", Napi::Function::New(env, NfqTable));
  exports.Set("nfqOpen", Napi::Function::New(env, NfqOpen));
  exports.Set("nfqRead", Napi::Function::New(env, NfqRead));
  exports.Set("nfqVerdict", Napi::Function::New(env, NfqVerdict));
  exports.Set("nfqClose", Napi::Function::New(env, NfqClose));
}
