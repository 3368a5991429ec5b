// rtnetlink over NETLINK_ROUTE sockets: the per-sandbox link work of lib/network (veth pair
// with its peer created straight in the sandbox's netns, addresses, default route, ifb, tbf and
// the ingress redirect) without spawning ip/tc, which costs ~8 ms per process.
//
// Every call but deletion is synchronous on the JS thread: each is a handful of netlink round
// trips of a few microseconds. Deleting a link returns only after the kernel's rcu_barrier in
// netdev_run_todo (~16 ms here), so deletion runs on a worker thread and resolves a promise.
// Failures are data, { errno, step, detail? } (detail: the kernel's extended ack message).
// Policy (names, addresses, rates, what to make) comes from lib/network; nothing is decided here.
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
#include "netlink.h"

#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif

namespace {

// One request buffer holding one or more messages (sent in one sendmsg: the kernel runs them
// in order and acks each). 8 KiB is far above the largest batch built here (~600 bytes).
struct nl_req {
  alignas(NLMSG_ALIGNTO) char buf[8192];
  size_t len = 0;
  nlmsghdr *cur = nullptr;
  int count = 0;
  bool overflow = false;
};

struct nl_result {
  int err = 0;       // negative errno, 0 on success
  int index = -1;    // which message of the batch failed
  std::string detail;
};

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

// NETLINK_CAP_ACK: acks carry only the failing header, not the whole request echoed back.
// NETLINK_EXT_ACK: failures carry the kernel's reason ("Exclusivity flag on, cannot modify").
int nl_open(int protocol = NETLINK_ROUTE) {
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
nl_result nl_talk(int fd, nl_req &r, std::vector<char> *reply = nullptr) {
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
  int pending = r.count;
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

// Appends RTM_NEWLINK/SETLINK's IFLA_AF_SPEC { AF_INET6 { addr_gen_mode none } }: the links
// carry IPv4 only, so no IPv6 link-local address (and no DAD, no router solicitations).
void put_addrgenmode_none(nl_req &r) {
  rtattr *spec = nest_begin(r, IFLA_AF_SPEC);
  rtattr *inet6 = nest_begin(r, AF_INET6);
  uint8_t mode = IN6_ADDR_GEN_MODE_NONE;
  attr_put(r, IFLA_INET6_ADDR_GEN_MODE, &mode, 1);
  nest_end(r, inet6);
  nest_end(r, spec);
}

std::string arg_string(const Napi::Value &v) { return v.As<Napi::String>().Utf8Value(); }

bool name_ok(const std::string &s) { return !s.empty() && s.size() < IFNAMSIZ; }

// Where it runs: a short-lived thread that exists only to enter the target netns, so the
// socket it opens belongs to that netns (a socket keeps the netns it was created in). The JS
// thread never calls setns: it would move libuv's and V8's threads' view of the network too.
struct ns_socket_req {
  int nsfd;
  int fd;
};

void *ns_socket_thread(void *p) {
  ns_socket_req *q = static_cast<ns_socket_req *>(p);
  if (setns(q->nsfd, CLONE_NEWNET) < 0) {
    q->fd = -errno;
    return nullptr;
  }
  q->fd = nl_open();
  return nullptr;
}

// netlinkSocket(pid): a NETLINK_ROUTE socket inside the netns of host pid `pid`, or a failure
// (step 'netns' when /proc/<pid>/ns/net cannot be opened or entered). The caller closes it.
Napi::Value NetlinkSocket(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int pid = info[0].As<Napi::Number>().Int32Value();
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
  int nsfd = open(path, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) return failure(env, "netns", errno, path);
  ns_socket_req q = {nsfd, -1};
  pthread_t t;
  int e = pthread_create(&t, nullptr, ns_socket_thread, &q);
  if (e != 0) {
    close(nsfd);
    return failure(env, "netns", e, "pthread_create");
  }
  pthread_join(t, nullptr);
  close(nsfd);
  if (q.fd < 0) return failure(env, "netns", -q.fd, path);
  return Napi::Number::New(env, q.fd);
}

// netlinkAddVeth(host, peer, pid, queues): a veth pair, `host` in the caller's netns and `peer` created
// directly in the netns of pid (IFLA_NET_NS_FD in the peer's attributes): no move between
// namespaces, which would cost an RCU grace period. Both ends are down. (IFLA_AF_SPEC is
// refused with EAFNOSUPPORT on a link being created: addrgenmode is set by netlinkConfigure.)
// `queues` (0: the kernel's default, one per CPU) sets both ends' tx and rx queue counts: each
// queue is a set of sysfs objects made on create and removed on delete.
Napi::Value NetlinkAddVeth(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string host = arg_string(info[0]), peer = arg_string(info[1]);
  int pid = info[2].As<Napi::Number>().Int32Value();
  uint32_t queues = info[3].As<Napi::Number>().Uint32Value();
  if (!name_ok(host) || !name_ok(peer)) return failure(env, "veth", EINVAL, "interface name");
  int fd = host_fd();
  if (fd < 0) return failure(env, "socket", -fd, "");
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
  int nsfd = open(path, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) return failure(env, "netns", errno, path);

  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  attr_str(r, IFLA_IFNAME, host.c_str());
  if (queues > 0) {
    attr_u32(r, IFLA_NUM_TX_QUEUES, queues);
    attr_u32(r, IFLA_NUM_RX_QUEUES, queues);
  }
  rtattr *linkinfo = nest_begin(r, IFLA_LINKINFO);
  attr_str(r, IFLA_INFO_KIND, "veth");
  rtattr *data = nest_begin(r, IFLA_INFO_DATA);
  rtattr *peer_attr = nest_begin(r, VETH_INFO_PEER);
  ifinfomsg *pifi = static_cast<ifinfomsg *>(req_put(r, sizeof(ifinfomsg)));
  if (pifi) pifi->ifi_family = AF_UNSPEC;
  attr_str(r, IFLA_IFNAME, peer.c_str());
  attr_u32(r, IFLA_NET_NS_FD, (uint32_t)nsfd);
  if (queues > 0) {
    attr_u32(r, IFLA_NUM_TX_QUEUES, queues);
    attr_u32(r, IFLA_NUM_RX_QUEUES, queues);
  }
  nest_end(r, peer_attr);
  nest_end(r, data);
  nest_end(r, linkinfo);
  nl_result res = nl_talk(fd, r);
  close(nsfd);
  static const char *const steps[] = {"veth"};
  return result(env, res, steps);
}

// netlinkAddIfb(name): an ifb (down) in the caller's netns.
Napi::Value NetlinkAddIfb(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string name = arg_string(info[0]);
  if (!name_ok(name)) return failure(env, "ifb", EINVAL, "interface name");
  int fd = host_fd();
  if (fd < 0) return failure(env, "socket", -fd, "");
  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  attr_str(r, IFLA_IFNAME, name.c_str());
  rtattr *linkinfo = nest_begin(r, IFLA_LINKINFO);
  attr_str(r, IFLA_INFO_KIND, "ifb");
  nest_end(r, linkinfo);
  static const char *const steps[] = {"ifb"};
  return result(env, nl_talk(fd, r), steps);
}

// netlinkConfigure(sock, name, address, prefix, gateway): on the link `name` of the socket's
// netns (sock -1: the caller's): addrgenmode none, the IPv4 address/prefix, up, and when
// gateway is not 0 a default route via it. Addresses are host-order 32-bit numbers.
// One batch after the index lookup; addrgenmode goes in its own message before the one that
// brings the link up, because do_setlink applies flags before IFLA_AF_SPEC.
Napi::Value NetlinkConfigure(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int sock = info[0].As<Napi::Number>().Int32Value();
  std::string name = arg_string(info[1]);
  uint32_t address = info[2].As<Napi::Number>().Uint32Value();
  uint32_t prefix = info[3].As<Napi::Number>().Uint32Value();
  uint32_t gateway = info[4].As<Napi::Number>().Uint32Value();
  if (!name_ok(name) || prefix > 32) return failure(env, "link", EINVAL, "interface name or prefix");
  int fd = sock >= 0 ? sock : host_fd();
  if (fd < 0) return failure(env, "socket", -fd, "");
  std::string detail;
  int index = ifindex_of(fd, name.c_str(), &detail);
  if (index < 0) return failure(env, "link", -index, detail.empty() ? name : detail);

  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_SETLINK, 0, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = index;
  put_addrgenmode_none(r);

  ifaddrmsg *ifa = static_cast<ifaddrmsg *>(msg_begin(r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET;
  ifa->ifa_prefixlen = (uint8_t)prefix;
  ifa->ifa_index = (uint32_t)index;
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  uint32_t a = htonl(address);
  attr_put(r, IFA_LOCAL, &a, 4);
  attr_put(r, IFA_ADDRESS, &a, 4);
  if (prefix < 31) {
    uint32_t brd = htonl(address | (prefix == 0 ? 0xffffffffu : (0xffffffffu >> prefix)));
    attr_put(r, IFA_BROADCAST, &brd, 4);
  }

  ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_SETLINK, 0, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = index;
  ifi->ifi_flags = IFF_UP;
  ifi->ifi_change = IFF_UP;

  if (gateway != 0) {
    rtmsg *rt = static_cast<rtmsg *>(msg_begin(r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, sizeof(rtmsg)));
    rt->rtm_family = AF_INET;
    rt->rtm_dst_len = 0;
    rt->rtm_table = RT_TABLE_MAIN;
    rt->rtm_protocol = RTPROT_BOOT;
    rt->rtm_scope = RT_SCOPE_UNIVERSE;
    rt->rtm_type = RTN_UNICAST;
    uint32_t gw = htonl(gateway);
    attr_put(r, RTA_GATEWAY, &gw, 4);
    attr_u32(r, RTA_OIF, (uint32_t)index);
  }
  static const char *const steps[] = {"link", "address", "link", "route"};
  return result(env, nl_talk(fd, r), steps);
}

// netlinkSetUp(name): addrgenmode none, then up, for a link of the caller's netns (an ifb has no address).
Napi::Value NetlinkSetUp(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string name = arg_string(info[0]);
  if (!name_ok(name)) return failure(env, "link", EINVAL, "interface name");
  int fd = host_fd();
  if (fd < 0) return failure(env, "socket", -fd, "");
  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_SETLINK, 0, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  attr_str(r, IFLA_IFNAME, name.c_str());
  put_addrgenmode_none(r);
  ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_SETLINK, 0, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_flags = IFF_UP;
  ifi->ifi_change = IFF_UP;
  attr_str(r, IFLA_IFNAME, name.c_str());
  static const char *const steps[] = {"link", "link"};
  return result(env, nl_talk(fd, r), steps);
}

// netlinkAddTbf(name, rateBps, burstBytes, limitBytes): tbf as the root qdisc (handle 1:) of a
// link of the caller's netns. The bucket goes as TCA_TBF_BURST in bytes and the rate as
// link-layer aware (TC_LINKLAYER_ETHERNET), so the kernel computes its own tables and no rate
// table (TCA_TBF_RTAB, what tc sends for old kernels) is needed. Rates past 2^32-1 bytes/s go
// in TCA_TBF_RATE64, as tc does.
Napi::Value NetlinkAddTbf(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string name = arg_string(info[0]);
  double bps = info[1].As<Napi::Number>().DoubleValue();
  uint32_t burst = info[2].As<Napi::Number>().Uint32Value();
  uint32_t limit = info[3].As<Napi::Number>().Uint32Value();
  if (!name_ok(name) || !(bps >= 8) || burst == 0 || limit == 0) return failure(env, "qdisc", EINVAL, "tbf parameters");
  int fd = host_fd();
  if (fd < 0) return failure(env, "socket", -fd, "");
  std::string detail;
  int index = ifindex_of(fd, name.c_str(), &detail);
  if (index < 0) return failure(env, "qdisc", -index, detail.empty() ? name : detail);
  uint64_t rate64 = (uint64_t)(bps / 8);

  nl_req r;
  tcmsg *tc = static_cast<tcmsg *>(msg_begin(r, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, sizeof(tcmsg)));
  tc->tcm_family = AF_UNSPEC;
  tc->tcm_ifindex = index;
  tc->tcm_handle = TC_H_MAKE(1u << 16, 0);
  tc->tcm_parent = TC_H_ROOT;
  attr_str(r, TCA_KIND, "tbf");
  rtattr *opts = nest_begin(r, TCA_OPTIONS);
  tc_tbf_qopt q;
  memset(&q, 0, sizeof q);
  q.rate.rate = rate64 >= (1ull << 32) ? ~0u : (uint32_t)rate64;
  q.rate.linklayer = TC_LINKLAYER_ETHERNET;
  q.limit = limit;
  attr_put(r, TCA_TBF_PARMS, &q, sizeof q);
  attr_u32(r, TCA_TBF_BURST, burst);
  if (rate64 >= (1ull << 32)) attr_put(r, TCA_TBF_RATE64, &rate64, sizeof rate64);
  nest_end(r, opts);
  static const char *const steps[] = {"qdisc"};
  return result(env, nl_talk(fd, r), steps);
}

// netlinkAddRedirect(name, target): the ingress qdisc of `name` and a match-all u32 filter
// whose mirred action redirects every packet to the egress of `target` (an ifb, shaped there).
// u32 rather than matchall: CONFIG_NET_CLS_MATCHALL is often off (it is off on the kernel here).
Napi::Value NetlinkAddRedirect(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string name = arg_string(info[0]), target = arg_string(info[1]);
  if (!name_ok(name) || !name_ok(target)) return failure(env, "qdisc", EINVAL, "interface name");
  int fd = host_fd();
  if (fd < 0) return failure(env, "socket", -fd, "");
  std::string detail;
  int index = ifindex_of(fd, name.c_str(), &detail);
  if (index < 0) return failure(env, "qdisc", -index, detail.empty() ? name : detail);
  int tindex = ifindex_of(fd, target.c_str(), &detail);
  if (tindex < 0) return failure(env, "filter", -tindex, detail.empty() ? target : detail);

  nl_req r;
  tcmsg *tc = static_cast<tcmsg *>(msg_begin(r, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, sizeof(tcmsg)));
  tc->tcm_family = AF_UNSPEC;
  tc->tcm_ifindex = index;
  tc->tcm_handle = TC_H_MAKE(TC_H_INGRESS, 0);
  tc->tcm_parent = TC_H_INGRESS;
  attr_str(r, TCA_KIND, "ingress");

  tc = static_cast<tcmsg *>(msg_begin(r, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, sizeof(tcmsg)));
  tc->tcm_family = AF_UNSPEC;
  tc->tcm_ifindex = index;
  tc->tcm_parent = TC_H_MAKE(TC_H_INGRESS, 0);
  // prio 1, protocol all (tcm_info = prio << 16 | htons(proto)), as `tc filter ... protocol all prio 1`.
  tc->tcm_info = TC_H_MAKE(1u << 16, htons(ETH_P_ALL));
  attr_str(r, TCA_KIND, "u32");
  rtattr *opts = nest_begin(r, TCA_OPTIONS);
  // tc_u32_sel ends in a flexible array of keys: one key with mask 0 matches every packet.
  // TERMINAL: the action's verdict is final.
  alignas(tc_u32_sel) char selbuf[sizeof(tc_u32_sel) + sizeof(tc_u32_key)];
  memset(selbuf, 0, sizeof selbuf);
  tc_u32_sel *sel = reinterpret_cast<tc_u32_sel *>(selbuf);
  sel->nkeys = 1;
  sel->flags = TC_U32_TERMINAL;
  attr_put(r, TCA_U32_SEL, selbuf, sizeof selbuf);
  rtattr *acts = nest_begin(r, TCA_U32_ACT);
  rtattr *act = nest_begin(r, 1);
  attr_str(r, TCA_ACT_KIND, "mirred");
  rtattr *aopts = nest_begin(r, TCA_ACT_OPTIONS);
  tc_mirred m;
  memset(&m, 0, sizeof m);
  m.action = TC_ACT_STOLEN;
  m.eaction = TCA_EGRESS_REDIR;
  m.ifindex = (uint32_t)tindex;
  attr_put(r, TCA_MIRRED_PARMS, &m, sizeof m);
  nest_end(r, aopts);
  nest_end(r, act);
  nest_end(r, acts);
  nest_end(r, opts);
  static const char *const steps[] = {"qdisc", "filter"};
  return result(env, nl_talk(fd, r), steps);
}

// The JS thread's nf_tables socket, for the one lookup below.
int g_nft_fd = -1;

// netfilterSetExists(table, set): whether the set exists in the inet table (NFT_MSG_GETSET):
// true, false (ENOENT: no such table or set), or a failure. lib/network checks its table's
// marker set this way before each link instead of spawning nft (~8 ms), because a prune in
// another process may have removed the table since this process made it.
Napi::Value NetfilterSetExists(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string table = arg_string(info[0]), set = arg_string(info[1]);
  if (g_nft_fd < 0) g_nft_fd = nl_open(NETLINK_NETFILTER);
  if (g_nft_fd < 0) return failure(env, "nftables", -g_nft_fd, "");
  nl_req r;
  nfgenmsg *g = static_cast<nfgenmsg *>(msg_begin(r, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET, 0, sizeof(nfgenmsg)));
  g->nfgen_family = NFPROTO_INET;
  g->version = NFNETLINK_V0;
  attr_str(r, NFTA_SET_TABLE, table.c_str());
  attr_str(r, NFTA_SET_NAME, set.c_str());
  std::vector<char> reply;
  nl_result res = nl_talk(g_nft_fd, r, &reply);
  if (res.err == -ENOENT) return Napi::Boolean::New(env, false);
  if (res.err != 0) return failure(env, "nftables", res.err, res.detail);
  return Napi::Boolean::New(env, true);
}

// Deletion off the JS thread. RTM_DELLINK returns after netdev_run_todo's rcu_barrier (a grace
// period, ~16 ms here), so it runs on a libuv worker; lib/network queues deletions so that at
// most one worker is busy with them. Each worker opens its own socket (the JS thread's is not
// shared across threads).
class DeleteLinksWorker : public Napi::AsyncWorker {
 public:
  DeleteLinksWorker(Napi::Env env, std::vector<std::string> names)
      : Napi::AsyncWorker(env), names_(std::move(names)), errs_(names_.size(), 0), details_(names_.size()), deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int fd = nl_open();
    for (size_t i = 0; i < names_.size(); i++) {
      if (fd < 0) {
        errs_[i] = fd;
        continue;
      }
      nl_req r;
      ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_DELLINK, 0, sizeof(ifinfomsg)));
      ifi->ifi_family = AF_UNSPEC;
      attr_str(r, IFLA_IFNAME, names_[i].c_str());
      nl_result res = nl_talk(fd, r);
      errs_[i] = res.err;
      details_[i] = res.detail;
    }
    if (fd >= 0) close(fd);
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array out = Napi::Array::New(env, names_.size());
    for (size_t i = 0; i < names_.size(); i++) {
      out.Set((uint32_t)i, errs_[i] == 0 ? Napi::Value(Napi::Boolean::New(env, true)) : failure(env, "delete", errs_[i], details_[i]));
    }
    deferred_.Resolve(out);
  }

 private:
  std::vector<std::string> names_;
  std::vector<int> errs_;
  std::vector<std::string> details_;
  Napi::Promise::Deferred deferred_;
};

// netlinkDeleteLinks(names): a promise of one result per name, true or { errno, step: 'delete' }
// (ENODEV: already gone, e.g. with its netns). Deleting a veth end deletes its peer too.
Napi::Value NetlinkDeleteLinks(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<std::string> names;
  for (uint32_t i = 0; i < a.Length(); i++) names.push_back(a.Get(i).As<Napi::String>().Utf8Value());
  DeleteLinksWorker *w = new DeleteLinksWorker(env, std::move(names));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// netlinkDeleteLinksSync(names): the same as netlinkDeleteLinks, on the calling thread, for a
// process that is exiting ('exit' handlers cannot wait for a worker): one grace period a link.
Napi::Value NetlinkDeleteLinksSync(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Array a = info[0].As<Napi::Array>();
  Napi::Array out = Napi::Array::New(env, a.Length());
  int fd = host_fd();
  for (uint32_t i = 0; i < a.Length(); i++) {
    std::string name = a.Get(i).As<Napi::String>().Utf8Value();
    if (fd < 0) {
      out.Set(i, failure(env, "socket", -fd, ""));
      continue;
    }
    nl_req r;
    ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_DELLINK, 0, sizeof(ifinfomsg)));
    ifi->ifi_family = AF_UNSPEC;
    attr_str(r, IFLA_IFNAME, name.c_str());
    nl_result res = nl_talk(fd, r);
    out.Set(i, res.err == 0 ? Napi::Value(Napi::Boolean::New(env, true)) : failure(env, "delete", res.err, res.detail));
  }
  return out;
}

}  // namespace

void InitNetlink(Napi::Env env, Napi::Object exports) {
  exports.Set("netlinkSocket", Napi::Function::New(env, NetlinkSocket));
  exports.Set("netlinkAddVeth", Napi::Function::New(env, NetlinkAddVeth));
  exports.Set("netlinkAddIfb", Napi::Function::New(env, NetlinkAddIfb));
  exports.Set("netlinkConfigure", Napi::Function::New(env, NetlinkConfigure));
  exports.Set("netlinkSetUp", Napi::Function::New(env, NetlinkSetUp));
  exports.Set("netlinkAddTbf", Napi::Function::New(env, NetlinkAddTbf));
  exports.Set("netlinkAddRedirect", Napi::Function::New(env, NetlinkAddRedirect));
  exports.Set("netlinkDeleteLinks", Napi::Function::New(env, NetlinkDeleteLinks));
  exports.Set("netlinkDeleteLinksSync", Napi::Function::New(env, NetlinkDeleteLinksSync));
  exports.Set("netfilterSetExists", Napi::Function::New(env, NetfilterSetExists));
}
