// Netlink messages: request batches, attributes, sockets, acks and the kernel's extended ack
// message (netlink_msg.h).
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/if_ether.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/tc_act/tc_mirred.h>
#include <linux/veth.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "addon.h"
#include "netlink_msg.h"

namespace hutch_netlink {

// Sequence numbers for every socket: the JS thread and the deletion worker both take them.
std::atomic<uint32_t> g_seq{1};

void *req_put(nl_req &r, size_t n) {
  size_t aligned = NLMSG_ALIGN(n);
  if (r.len + aligned > sizeof r.buf) {
    r.overflow = true;
    return nullptr;
  }
  void *p = r.buf + r.len;
  memset(p, 0, aligned);
  r.len += aligned;
  if (r.cur) r.cur->nlmsg_len = (uint32_t)(r.buf + r.len - reinterpret_cast<char *>(r.cur));
  return p;
}

// Starts a message: header + its fixed family struct of `hdrlen` bytes.
void *msg_begin(nl_req &r, uint16_t type, uint16_t flags, size_t hdrlen) {
  r.cur = nullptr;
  nlmsghdr *h = static_cast<nlmsghdr *>(req_put(r, NLMSG_HDRLEN));
  if (!h) return nullptr;
  h->nlmsg_type = type;
  h->nlmsg_flags = (uint16_t)(NLM_F_REQUEST | NLM_F_ACK | flags);
  r.cur = h;
  h->nlmsg_len = NLMSG_HDRLEN;
  r.count++;
  return req_put(r, hdrlen);
}

rtattr *attr_put(nl_req &r, uint16_t type, const void *data, size_t n) {
  rtattr *a = static_cast<rtattr *>(req_put(r, RTA_LENGTH(n)));
  if (!a) return nullptr;
  a->rta_type = type;
  a->rta_len = (uint16_t)RTA_LENGTH(n);
  if (n) memcpy(RTA_DATA(a), data, n);
  return a;
}

void attr_str(nl_req &r, uint16_t type, const char *s) { attr_put(r, type, s, strlen(s) + 1); }
void attr_u32(nl_req &r, uint16_t type, uint32_t v) { attr_put(r, type, &v, sizeof v); }

rtattr *nest_begin(nl_req &r, uint16_t type) { return attr_put(r, type, nullptr, 0); }
void nest_end(nl_req &r, rtattr *a) {
  if (a) a->rta_len = (uint16_t)(r.buf + r.len - reinterpret_cast<char *>(a));
}

nfgenmsg *nfgen_begin(nl_req &r, uint16_t subsys, uint16_t msg, uint16_t flags, uint8_t family, uint16_t res_id) {
  nfgenmsg *g = static_cast<nfgenmsg *>(msg_begin(r, (uint16_t)((subsys << 8) | msg), flags, sizeof(nfgenmsg)));
  if (!g) return nullptr;
  g->nfgen_family = family;
  g->version = NFNETLINK_V0;
  g->res_id = htons(res_id);
  return g;
}

void nft_batch_marker(nl_req &r, uint16_t type) {
  // A marker's type is the whole message type (NFNL_MSG_BATCH_BEGIN/END: subsystem 0).
  if (!nfgen_begin(r, 0, type, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES)) return;
  r.cur->nlmsg_flags = NLM_F_REQUEST;
  r.unacked++;
}

// NETLINK_CAP_ACK: acks carry only the failing header, not the whole request echoed back.
// NETLINK_EXT_ACK: failures carry the kernel's reason ("Exclusivity flag on, cannot modify").
int nl_open(int protocol) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  return fd;
}

std::string ext_ack_message(const nlmsghdr *h) {
  if (!(h->nlmsg_flags & NLM_F_ACK_TLVS)) return std::string();
  size_t off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nlmsgerr));
  if (!(h->nlmsg_flags & NLM_F_CAPPED)) {
    const nlmsgerr *e = static_cast<const nlmsgerr *>(NLMSG_DATA(h));
    off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nlmsgerr) - sizeof(nlmsghdr) + e->msg.nlmsg_len);
  }
  const char *p = reinterpret_cast<const char *>(h) + off;
  const char *end = reinterpret_cast<const char *>(h) + h->nlmsg_len;
  while (p + sizeof(nlattr) <= end) {
    const nlattr *a = reinterpret_cast<const nlattr *>(p);
    if (a->nla_len < sizeof(nlattr) || p + a->nla_len > end) break;
    if ((a->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG) {
      return std::string(reinterpret_cast<const char *>(a) + NLA_HDRLEN, strnlen(reinterpret_cast<const char *>(a) + NLA_HDRLEN, a->nla_len - NLA_HDRLEN));
    }
    p += NLA_ALIGN(a->nla_len);
  }
  return std::string();
}

// Sends the batch and reads one ack per message. The first failure wins; every ack is still
// read so the socket holds nothing stale for the next call. `reply`, when given, receives the
// first non-ack message (the answer to a GET).
nl_result nl_talk(int fd, nl_req &r, std::vector<char> *reply) {
  nl_result res;
  if (r.overflow) {
    res.err = -EMSGSIZE;
    return res;
  }
  // Consecutive sequence numbers for the batch, taken at once: acks are matched by range.
  uint32_t first_seq = g_seq.fetch_add((uint32_t)r.count);
  {
    size_t off = 0;
    for (int i = 0; i < r.count && off < r.len; i++) {
      nlmsghdr *h = reinterpret_cast<nlmsghdr *>(r.buf + off);
      h->nlmsg_seq = first_seq + (uint32_t)i;
      off += NLMSG_ALIGN(h->nlmsg_len);
    }
  }
  sockaddr_nl to;
  memset(&to, 0, sizeof to);
  to.nl_family = AF_NETLINK;
  ssize_t n;
  do n = sendto(fd, r.buf, r.len, 0, reinterpret_cast<sockaddr *>(&to), sizeof to); while (n < 0 && errno == EINTR);
  if (n < 0) {
    res.err = -errno;
    return res;
  }
  int pending = r.count - r.unacked;
  alignas(NLMSG_ALIGNTO) static thread_local char buf[32768];
  while (pending > 0) {
    do n = recv(fd, buf, sizeof buf, 0); while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (res.err == 0) res.err = -errno;
      return res;
    }
    for (nlmsghdr *h = reinterpret_cast<nlmsghdr *>(buf); NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq < first_seq || h->nlmsg_seq >= first_seq + (uint32_t)r.count) continue;  // stale
      if (h->nlmsg_type == NLMSG_ERROR) {
        const nlmsgerr *e = static_cast<const nlmsgerr *>(NLMSG_DATA(h));
        pending--;
        if (e->error != 0 && res.err == 0) {
          res.err = e->error;
          res.index = (int)(h->nlmsg_seq - first_seq);
          res.detail = ext_ack_message(h);
        }
      } else if (reply && reply->empty()) {
        reply->assign(reinterpret_cast<char *>(h), reinterpret_cast<char *>(h) + h->nlmsg_len);
      }
    }
  }
  return res;
}

// The host's socket: opened on first use by the JS thread, which is the only thread using it.
int g_host_fd = -1;

int host_fd(void) {
  if (g_host_fd < 0) g_host_fd = nl_open();
  return g_host_fd;
}

Napi::Value failure(Napi::Env env, const char *step, int err, const std::string &detail) {
  Napi::Object o = sys_failure(env, step, err, nullptr);
  if (!detail.empty()) o.Set("detail", detail);
  return o;
}

Napi::Value result(Napi::Env env, const nl_result &r, const char *const *steps) {
  if (r.err == 0) return Napi::Boolean::New(env, true);
  return failure(env, steps[r.index < 0 ? 0 : r.index], r.err, r.detail);
}

// The ifindex of `name` in the socket's netns (RTM_GETLINK by name), or -errno.
int ifindex_of(int fd, const char *name, std::string *detail) {
  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_GETLINK, 0, sizeof(ifinfomsg)));
  if (!ifi) return -EMSGSIZE;
  ifi->ifi_family = AF_UNSPEC;
  // Only the header is wanted: skip the stats and VF info that make a link dump large.
  attr_u32(r, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  attr_str(r, IFLA_IFNAME, name);
  std::vector<char> reply;
  nl_result res = nl_talk(fd, r, &reply);
  if (res.err != 0) {
    if (detail) *detail = res.detail;
    return res.err;
  }
  if (reply.size() < NLMSG_HDRLEN + sizeof(ifinfomsg)) return -ENODEV;
  const ifinfomsg *got = static_cast<const ifinfomsg *>(NLMSG_DATA(reinterpret_cast<nlmsghdr *>(reply.data())));
  return got->ifi_index;
}

std::string arg_string(const Napi::Value &v) { return v.As<Napi::String>().Utf8Value(); }

bool name_ok(const std::string &s) { return !s.empty() && s.size() < IFNAMSIZ; }

}  // namespace hutch_netlink
