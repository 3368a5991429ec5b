// Traffic control over rtnetlink: tbf as a link's root qdisc, and the ingress redirect to an
// ifb (lib/network/tc.ts decides the rates; nothing is decided here).
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
  int fd = info.Length() > 4 && info[4].IsNumber() ? info[4].As<Napi::Number>().Int32Value() : host_fd();  // a socket of another netns
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
  int fd = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : host_fd();  // a socket of another netns
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

}  // namespace hutch_netlink
