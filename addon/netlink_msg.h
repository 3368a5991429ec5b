// Netlink messages for the addon's netlink files (netlink.cc: links; netlink_tc.cc: qdiscs
// and filters; netfilter.cc: the nf_tables lookup): building a batch of messages, sending it
// and reading one ack per message, failures as data. Internal to the addon; netlink.h is the
// registration the addon calls.
#pragma once
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <napi.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <string>
#include <vector>

#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif

namespace hutch_netlink {

// One request buffer holding one or more messages (sent in one sendmsg: the kernel runs them
// in order and acks each). 8 KiB is far above the largest batch built here (~600 bytes).
struct nl_req {
  alignas(NLMSG_ALIGNTO) char buf[8192];
  size_t len = 0;
  nlmsghdr *cur = nullptr;
  int count = 0;
  // Messages of the batch the kernel does not ack (nf_tables batch begin/end markers).
  int unacked = 0;
  bool overflow = false;
};

struct nl_result {
  int err = 0;       // negative errno, 0 on success
  int index = -1;    // which message of the batch failed
  std::string detail;
};

void *req_put(nl_req &r, size_t n);
// Starts a message: header + its fixed family struct of `hdrlen` bytes.
void *msg_begin(nl_req &r, uint16_t type, uint16_t flags, size_t hdrlen);
rtattr *attr_put(nl_req &r, uint16_t type, const void *data, size_t n);
void attr_str(nl_req &r, uint16_t type, const char *s);
void attr_u32(nl_req &r, uint16_t type, uint32_t v);
rtattr *nest_begin(nl_req &r, uint16_t type);
// Starts a netfilter message (nfnetlink: subsystem `subsys`, message `msg`) with its nfgenmsg
// filled: `family`, version 0, `res_id` (host order; a queue number, a subsystem). Null when
// the request is full.
struct nfgenmsg *nfgen_begin(nl_req &r, uint16_t subsys, uint16_t msg, uint16_t flags, uint8_t family, uint16_t res_id = 0);
// An nf_tables batch's begin or end marker (NFNL_MSG_BATCH_BEGIN/END), not acked: nl_talk
// then reads one ack per message between them, as the kernel runs them in one transaction.
void nft_batch_marker(nl_req &r, uint16_t type);
void nest_end(nl_req &r, rtattr *a);
// A netlink socket with NETLINK_CAP_ACK and NETLINK_EXT_ACK, or -errno.
int nl_open(int protocol = NETLINK_ROUTE);
// Sends the batch and reads one ack per message (the first failure wins); `reply`, when
// given, receives the first non-ack message (the answer to a GET).
nl_result nl_talk(int fd, nl_req &r, std::vector<char> *reply = nullptr);
// The JS thread's NETLINK_ROUTE socket in the host's netns, opened on first use, or -errno.
int host_fd(void);
// { errno, step, detail? } as lib/native.ts types a failure.
Napi::Value failure(Napi::Env env, const char *step, int err, const std::string &detail);
// true, or the failure of the batch's failing message, named from `steps`.
Napi::Value result(Napi::Env env, const nl_result &r, const char *const *steps);
// The ifindex of `name` in the socket's netns (RTM_GETLINK by name), or -errno.
int ifindex_of(int fd, const char *name, std::string *detail);
std::string arg_string(const Napi::Value &v);
bool name_ok(const std::string &s);

// Calls fn(h) for each whole message of a datagram of `n` bytes, walked by offset: a message's
// length need not be aligned and the last one's padding may be missing from the datagram
// (NLMSG_NEXT would then take the remaining length below zero and walk past the end).
template <typename F>
void for_each_msg(char *buf, ssize_t n, F fn) {
  for (size_t off = 0; n > 0 && off + NLMSG_HDRLEN <= static_cast<size_t>(n);) {
    nlmsghdr *h = reinterpret_cast<nlmsghdr *>(buf + off);
    if (h->nlmsg_len < NLMSG_HDRLEN || h->nlmsg_len > static_cast<size_t>(n) - off) break;
    off += NLMSG_ALIGN(h->nlmsg_len);
    fn(h);
  }
}

// Calls fn(type, data, len) for each attribute of an nfnetlink message (after its nfgenmsg).
template <typename F>
void for_each_nfattr(const nlmsghdr *h, F fn) {
  int alen = static_cast<int>(h->nlmsg_len) - static_cast<int>(NLMSG_SPACE(4));
  const nlattr *a = reinterpret_cast<const nlattr *>(reinterpret_cast<const char *>(h) + NLMSG_SPACE(4));
  while (alen >= static_cast<int>(NLA_HDRLEN) && a->nla_len >= NLA_HDRLEN && a->nla_len <= alen) {
    fn(static_cast<uint16_t>(a->nla_type & NLA_TYPE_MASK), reinterpret_cast<const char *>(a) + NLA_HDRLEN, static_cast<size_t>(a->nla_len - NLA_HDRLEN));
    alen -= NLA_ALIGN(a->nla_len);
    a = reinterpret_cast<const nlattr *>(reinterpret_cast<const char *>(a) + NLA_ALIGN(a->nla_len));
  }
}

// The JS-facing functions of netlink_tc.cc and netfilter.cc, registered by InitNetlink.
Napi::Value NetlinkAddTbf(const Napi::CallbackInfo &info);
Napi::Value NetlinkAddRedirect(const Napi::CallbackInfo &info);
Napi::Value NetfilterSetExists(const Napi::CallbackInfo &info);

}  // namespace hutch_netlink
