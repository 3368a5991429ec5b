/** IPv4 addresses and prefixes as plain numbers: parsed once at the edge, compared as integers after. */

/** An IPv4 prefix: `network` is the first address as an unsigned 32-bit number. */
export interface Cidr {
  readonly network: number;
  readonly prefix: number;
}

const OCTET = '(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

/** `'10.0.0.1'` -> 0x0a000001, or undefined when it is not a dotted IPv4 address. */
export function parseIpv4(text: string): number | undefined {
  const m = IPV4.exec(text);
  if (!m) return undefined;
  return ((Number(m[1]) << 24) | (Number(m[2]) << 16) | (Number(m[3]) << 8) | Number(m[4])) >>> 0;
}

export function formatIpv4(addr: number): string {
  return [addr >>> 24, (addr >>> 16) & 255, (addr >>> 8) & 255, addr & 255].join('.');
}

export function mask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.network)}/${c.prefix}`;
}

/** Number of addresses in the prefix. */
export function size(c: Cidr): number {
  return 2 ** (32 - c.prefix);
}

export function contains(c: Cidr, addr: number): boolean {
  return ((addr & mask(c.prefix)) >>> 0) === c.network;
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  const p = Math.min(a.prefix, b.prefix);
  return ((a.network & mask(p)) >>> 0) === ((b.network & mask(p)) >>> 0);
}

/** The outcome of parsing a CIDR: the prefix, or why not (for the caller's EINVAL). */
export type CidrParse =
  | { ok: true; cidr: Cidr }
  | { ok: false; reason: 'syntax' | 'ipv6' | 'host-bits'; suggestion?: string };

/**
 * `'10.1.0.0/16'` or a bare address (`'10.1.2.3'` = /32). Host bits set (`'10.1.2.3/16'`)
 * are refused with the network address as a suggestion, since they are usually a typo.
 */
export function parseCidr(text: string): CidrParse {
  if (text.includes(':')) return { ok: false, reason: 'ipv6' };
  const slash = text.indexOf('/');
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const prefixText = slash < 0 ? '32' : text.slice(slash + 1);
  const addr = parseIpv4(addrText);
  if (addr === undefined || !/^(3[0-2]|[12]?\d)$/.test(prefixText)) return { ok: false, reason: 'syntax' };
  const prefix = Number(prefixText);
  const network = (addr & mask(prefix)) >>> 0;
  if (network !== addr) {
    return { ok: false, reason: 'host-bits', suggestion: formatCidr({ network, prefix }) };
  }
  return { ok: true, cidr: { network, prefix } };
}
