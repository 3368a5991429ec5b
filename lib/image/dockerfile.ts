/**
 * Dockerfile text → instructions, and Docker's word processing (quotes, escapes and
 * variable substitution). No I/O here: build.ts runs the instructions.
 *
 * What follows Docker's reference (docs.docker.com/reference/dockerfile):
 * - parser directives at the top (`# escape=` honoured, `# syntax=` and `# check=` ignored);
 * - a line ending in the escape character continues on the next; comment lines and empty
 *   lines inside a continuation are dropped;
 * - the keyword is case-insensitive; leading `--name[=value]` flags are split off for
 *   FROM, RUN, COPY and ADD;
 * - `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`,
 *   `${VAR:?message}`, `${VAR?message}`; `\$` is a literal `$`; nothing is substituted inside
 *   single quotes; quotes are removed.
 */
import { HutchError } from '../errors.js';

export interface Instruction {
  /** 1-based line where the instruction starts. */
  line: number;
  /** Upper case, e.g. `RUN`. */
  keyword: string;
  /** Leading `--name[=value]` flags (FROM, RUN, COPY, ADD). */
  flags: { name: string; value: string | undefined }[];
  /** The arguments after the keyword and flags, continuation lines joined. */
  args: string;
  /** The instruction as written (continuations joined), for messages. */
  source: string;
}

export interface Dockerfile {
  instructions: Instruction[];
  /** The escape character (`\` unless a `# escape=` directive says `` ` ``). */
  escape: string;
}

export const KEYWORDS = new Set([
  'FROM', 'RUN', 'CMD', 'LABEL', 'MAINTAINER', 'EXPOSE', 'ENV', 'ADD', 'COPY', 'ENTRYPOINT', 'VOLUME', 'USER', 'WORKDIR', 'ARG',
  'ONBUILD', 'STOPSIGNAL', 'HEALTHCHECK', 'SHELL',
]);
const FLAGGED = new Set(['FROM', 'RUN', 'COPY', 'ADD']);

/** EBUILD naming the Dockerfile line (and the instruction when known). */
export function buildError(at: Instruction | number, message: string, cause?: unknown): HutchError {
  const where = typeof at === 'number' ? `Dockerfile line ${at}` : `Dockerfile line ${at.line} (${at.keyword})`;
  return new HutchError('EBUILD', `${where}: ${message}`, { path: `Dockerfile:${typeof at === 'number' ? at : at.line}`, ...(cause !== undefined ? { cause } : {}) });
}

export function parseDockerfile(text: string): Dockerfile {
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  let escape = '\\';
  let i = 0;
  // Parser directives: `# key=value` lines at the very top.
  const seen = new Set<string>();
  for (; i < lines.length; i++) {
    const m = /^\s*#\s*([A-Za-z]+)\s*=\s*(\S*)\s*$/.exec(lines[i]!);
    if (!m) break;
    const key = m[1]!.toLowerCase();
    if (seen.has(key)) break;
    seen.add(key);
    if (key === 'escape') {
      if (m[2] !== '\\' && m[2] !== '`') throw buildError(i + 1, `the escape directive must be \\ or \`, not ${JSON.stringify(m[2])}`);
      escape = m[2];
    } else if (key !== 'syntax' && key !== 'check') break;
  }
  const continued = new RegExp(`${escape === '\\' ? '\\\\' : '`'}[ \\t]*$`);
  const out: Instruction[] = [];
  while (i < lines.length) {
    const first = lines[i]!;
    if (/^\s*(#|$)/.test(first)) {
      i++;
      continue;
    }
    const start = i + 1;
    let joined = '';
    let line = first;
    for (;;) {
      i++;
      if (!continued.test(line)) {
        joined += line;
        break;
      }
      joined += line.replace(continued, '');
      // Comment and empty lines inside a continuation are dropped.
      while (i < lines.length && /^\s*(#|$)/.test(lines[i]!)) i++;
      if (i >= lines.length) break;
      line = lines[i]!;
    }
    const m = /^\s*(\S+)\s*([\s\S]*)$/.exec(joined);
    if (!m) continue;
    const keyword = m[1]!.toUpperCase();
    if (!KEYWORDS.has(keyword)) throw buildError(start, `unknown instruction ${JSON.stringify(m[1])}`);
    let args = m[2]!.trim();
    const flags: Instruction['flags'] = [];
    if (FLAGGED.has(keyword)) {
      for (;;) {
        const f = /^--([A-Za-z][A-Za-z0-9-]*)(?:=(\S*))?(?:\s+|$)/.exec(args);
        if (!f) break;
        flags.push({ name: f[1]!, value: f[2] });
        args = args.slice(f[0].length);
      }
    }
    // Heredocs are refused here, before their body lines read as instructions.
    if ((keyword === 'RUN' || keyword === 'COPY' || keyword === 'ADD') && hasHeredoc(args)) {
      throw buildError(start, `heredocs (<<EOF) are not supported in ${keyword}`);
    }
    out.push({ line: start, keyword, flags, args, source: joined.trim() });
  }
  return { instructions: out, escape };
}

/** The exec (JSON) form of RUN, CMD, ENTRYPOINT, SHELL, COPY, ADD; null for the shell form. */
export function jsonForm(args: string): string[] | null {
  const t = args.trim();
  if (!t.startsWith('[')) return null;
  try {
    const v = JSON.parse(t) as unknown;
    if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v as string[];
  } catch {
    /* not JSON: Docker takes it as the shell form */
  }
  return null;
}

/** A heredoc (`<<EOF`), which this builder does not support. */
export function hasHeredoc(args: string): boolean {
  return /(^|\s)<<-?\s*["']?[A-Za-z_][A-Za-z0-9_]*["']?(\s|$)/.test(args);
}

export type Vars = ReadonlyMap<string, string>;

/**
 * Docker's word processing: quotes removed, escapes applied, variables substituted (when
 * `vars` is given). `split` cuts at unquoted whitespace; substituted values are never split.
 * Throws a plain Error on bad syntax (the caller names the line).
 */
export function processWords(text: string, vars: Vars | null, escape: string, split: boolean): string[] {
  return new Lexer(text, vars, escape).run(split);
}

/** One word: no splitting, surrounding whitespace trimmed. */
export function processWord(text: string, vars: Vars | null, escape: string): string {
  return processWords(text.trim(), vars, escape, false)[0] ?? '';
}

class Lexer {
  private pos = 0;
  constructor(private readonly s: string, private readonly vars: Vars | null, private readonly esc: string) {}

  run(split: boolean): string[] {
    const words: string[] = [];
    let cur = '';
    let inWord = false;
    while (this.pos < this.s.length) {
      const ch = this.s[this.pos]!;
      if (split && /\s/.test(ch)) {
        if (inWord) words.push(cur);
        cur = '';
        inWord = false;
        this.pos++;
        continue;
      }
      inWord = true;
      cur += this.unit();
    }
    if (inWord) words.push(cur);
    return words;
  }

  /** Reads one unit (a character, an escape, a quoted string, a substitution) and returns its value. */
  private unit(): string {
    const ch = this.s[this.pos]!;
    if (ch === this.esc) {
      this.pos++;
      if (this.pos >= this.s.length) return this.esc;
      return this.s[this.pos++]!;
    }
    if (ch === "'") return this.single();
    if (ch === '"') return this.double();
    if (ch === '$' && this.vars) return this.dollar();
    this.pos++;
    return ch;
  }

  private single(): string {
    const end = this.s.indexOf("'", this.pos + 1);
    if (end < 0) throw new Error('unterminated single quote');
    const v = this.s.slice(this.pos + 1, end);
    this.pos = end + 1;
    return v;
  }

  private double(): string {
    this.pos++;
    let v = '';
    for (;;) {
      if (this.pos >= this.s.length) throw new Error('unterminated double quote');
      const ch = this.s[this.pos]!;
      if (ch === '"') {
        this.pos++;
        return v;
      }
      if (ch === this.esc && this.pos + 1 < this.s.length) {
        const next = this.s[this.pos + 1]!;
        if (next === '"' || next === '$' || next === this.esc) {
          v += next;
          this.pos += 2;
          continue;
        }
      }
      if (ch === '$' && this.vars) {
        v += this.dollar();
        continue;
      }
      v += ch;
      this.pos++;
    }
  }

  private dollar(): string {
    const vars = this.vars!;
    const s = this.s;
    this.pos++; // $
    if (s[this.pos] === '{') {
      this.pos++;
      const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(s.slice(this.pos));
      if (!m) throw new Error(`bad substitution at ${JSON.stringify(s.slice(this.pos - 2, this.pos + 8))}`);
      const name = m[0];
      this.pos += name.length;
      const value = vars.get(name);
      if (s[this.pos] === '}') {
        this.pos++;
        return value ?? '';
      }
      const op = /^(:-|:\+|:\?|-|\+|\?)/.exec(s.slice(this.pos));
      if (!op) throw new Error(`unsupported substitution \${${name}${s.slice(this.pos, this.pos + 3)}...} (supported: :- - :+ + :? ?)`);
      this.pos += op[0].length;
      const word = this.until('}');
      const unsetOrEmpty = value === undefined || value === '';
      switch (op[0]) {
        case ':-': return unsetOrEmpty ? word : value;
        case '-': return value === undefined ? word : value;
        case ':+': return unsetOrEmpty ? '' : word;
        case '+': return value === undefined ? '' : word;
        case ':?':
          if (unsetOrEmpty) throw new Error(`${name}: ${word || 'is not set'}`);
          return value;
        default:
          if (value === undefined) throw new Error(`${name}: ${word || 'is not set'}`);
          return value;
      }
    }
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(s.slice(this.pos));
    if (!m) return '$';
    this.pos += m[0].length;
    return vars.get(m[0]) ?? '';
  }

  /** The processed text up to an unquoted `end` (consumed). */
  private until(end: string): string {
    let v = '';
    for (;;) {
      if (this.pos >= this.s.length) throw new Error(`missing ${JSON.stringify(end)} in a substitution`);
      if (this.s[this.pos] === end) {
        this.pos++;
        return v;
      }
      v += this.unit();
    }
  }
}

/** `name=value` pairs (ENV, LABEL, ARG), or the legacy `ENV name value` form. */
export function keyValues(ins: Instruction, vars: Vars | null, escape: string, legacy: boolean): [string, string | undefined][] {
  const raw = ins.args;
  if (raw === '') throw buildError(ins, `${ins.keyword} needs arguments`);
  const firstWord = /^\S+/.exec(raw)![0];
  if (legacy && !firstWord.includes('=')) {
    // ENV name value: the rest of the line is the value.
    const name = processWord(firstWord, null, escape);
    const rest = raw.slice(firstWord.length).trim();
    if (rest === '') throw buildError(ins, `ENV ${name} needs a value (ENV name value, or ENV name=value)`);
    return [[name, processWord(rest, vars, escape)]];
  }
  // Split first (quotes kept), then process each word: substituted values never split.
  const words = splitRaw(raw, escape);
  return words.map((w) => {
    const eq = w.indexOf('=');
    if (eq < 0) {
      if (ins.keyword === 'ARG') return [processWord(w, null, escape), undefined];
      throw buildError(ins, `${JSON.stringify(w)} is not name=value`);
    }
    const name = processWord(w.slice(0, eq), null, escape);
    return [name, processWords(w.slice(eq + 1), vars, escape, false)[0] ?? ''];
  });
}

/** Splits at unquoted, unescaped whitespace (not inside `${...}`) keeping quotes and escapes in the words. */
export function splitRaw(s: string, escape: string): string[] {
  const out: string[] = [];
  let cur = '';
  let q: string | null = null;
  let braces = 0; // inside ${...}, whitespace does not split
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (q !== "'" && ch === '$' && s[i + 1] === '{') braces++;
    else if (braces > 0 && ch === '}') braces--;
    if (q === null && braces === 0 && /\s/.test(ch)) {
      if (cur !== '') out.push(cur);
      cur = '';
      continue;
    }
    if (ch === escape && q !== "'" && i + 1 < s.length) {
      cur += ch + s[++i]!;
      continue;
    }
    if (ch === '"' || ch === "'") {
      if (q === null) q = ch;
      else if (q === ch) q = null;
    }
    cur += ch;
  }
  if (q !== null) throw new Error(`unterminated ${q === '"' ? 'double' : 'single'} quote`);
  if (cur !== '') out.push(cur);
  return out;
}
