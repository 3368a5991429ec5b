/** What the sandbox's /etc/hosts says; the sandbox setup writes it. */

/** The name of the host side of the link, inside the sandbox. */
export const HOST_ALIAS = 'host.hutch.internal';

/**
 * Lines of /etc/hosts: localhost, the sandbox's hostname (its eth0 address with a link,
 * else 127.0.1.1 as Debian does) and, with a link, `host.hutch.internal`.
 */
export function hostsLines(hostname: string, link: { address: string; hostAddress: string } | null): string[] {
  const lines = ['127.0.0.1\tlocalhost', '::1\tlocalhost ip6-localhost ip6-loopback'];
  if (link) {
    lines.push(`${link.address}\t${hostname}`, `${link.hostAddress}\t${HOST_ALIAS}`);
  } else {
    lines.push(`127.0.1.1\t${hostname}`);
  }
  return lines;
}

export function hostsFile(hostname: string, link: { address: string; hostAddress: string } | null): string {
  return hostsLines(hostname, link).join('\n') + '\n';
}
