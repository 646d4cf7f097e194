#!/usr/bin/env node
// Validates AsyncAPI documents with the official AsyncAPI parser (@asyncapi/parser), a
// checker written independently of broker/asyncapi.py: our own unit tests can only check
// what we thought of, this one checks the document against the specification and the
// parser's ruleset (e.g. an operation's message must be one of its channel's messages).
//
//   node tools/asyncapi/validate.mjs [--json] FILE...
//
// Every diagnostic is printed: severity, file:line:column, JSON pointer, rule, message.
// The exit status is 0 when no document has an error, 1 when one has (or cannot be read),
// 2 on a usage error or when the parser is not installed (`make node-tools`).
//
// Only errors fail. An error means the document breaks the specification: tools that read
// it (code generators, documentation, brokers' gateways) may reject or misread it. Warnings
// and infos are the ruleset's advice (a newer AsyncAPI version exists, a description is
// missing); they are printed so that a person sees them, but a contract that is correct
// does not go red for style, and taking the advice is a decision (e.g. moving the
// published contract to a newer AsyncAPI version), not a fix.
//
// With --json the result is one JSON array on stdout, one entry per file:
// {file, valid, diagnostics: [{severity, code, path, line, column, message}]}.

import { readFile } from 'node:fs/promises';
import path from 'node:path';

const SEVERITY = ['error', 'warning', 'info', 'hint'];
const ERROR = 0;

function usage(message) {
  process.stderr.write(`${message}\nusage: node validate.mjs [--json] FILE...\n`);
  process.exit(2);
}

// JSON pointer (RFC 6901), the form our own "$ref"s use, so a path can be searched for.
function pointer(segments) {
  return '/' + segments.map((s) => String(s).replaceAll('~', '~0').replaceAll('/', '~1')).join('/');
}

function describe(diagnostic) {
  const start = diagnostic.range?.start;
  return {
    severity: SEVERITY[diagnostic.severity] ?? String(diagnostic.severity),
    code: String(diagnostic.code),
    path: pointer(diagnostic.path ?? []),
    // Spectral counts from 0; editors and people count from 1.
    line: start ? start.line + 1 : null,
    column: start ? start.character + 1 : null,
    message: diagnostic.message,
  };
}

async function validate(parser, file) {
  const failed = (code, message) => ({
    file,
    valid: false,
    diagnostics: [{ severity: 'error', code, path: '/', line: null, column: null, message }],
  });
  let text;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    return failed('unreadable', `cannot read the file: ${error.message}`);
  }
  let diagnostics;
  try {
    // `source` lets a relative "$ref" to another file resolve next to this one.
    ({ diagnostics } = await parser.parse(text, { source: path.resolve(file) }));
  } catch (error) {
    // The parser reports bad documents as diagnostics; a throw is its own failure, and
    // must not pass for "no errors found".
    return failed('parser-crashed', `the parser failed: ${error.stack ?? error}`);
  }
  return {
    file,
    valid: !diagnostics.some((d) => d.severity === ERROR),
    diagnostics: diagnostics.map(describe),
  };
}

function print(result) {
  const count = (name) => result.diagnostics.filter((d) => d.severity === name).length;
  const counts = SEVERITY.map((name) => [name, count(name)]);
  const summary = counts.filter(([, n]) => n > 0).map(([name, n]) => `${n} ${name}`).join(', ');
  const verdict = result.valid ? 'valid' : 'INVALID';
  process.stdout.write(`${result.file}: ${verdict}${summary ? ` (${summary})` : ''}\n`);
  for (const d of result.diagnostics) {
    const where = d.line === null ? result.file : `${result.file}:${d.line}:${d.column}`;
    process.stdout.write(`  ${d.severity.padEnd(7)} ${where} ${d.path} [${d.code}] ${d.message}\n`);
  }
}

const args = process.argv.slice(2);
const json = args.includes('--json');
const files = args.filter((a) => a !== '--json');
const unknown = files.find((f) => f.startsWith('--'));
if (unknown) usage(`unknown option ${unknown}`);
if (files.length === 0) usage('no file given');

let Parser;
try {
  // Imported here rather than at the top so that a missing install says what to do.
  ({ Parser } = await import('@asyncapi/parser'));
} catch (error) {
  process.stderr.write(
    `@asyncapi/parser is not installed (${error.code ?? error.message}): run \`make node-tools\`\n`,
  );
  process.exit(2);
}

// One parser for every file: loading it and building its ruleset take about a second.
const parser = new Parser();
const results = [];
for (const file of files) results.push(await validate(parser, file));

if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
else results.forEach(print);
process.exitCode = results.every((r) => r.valid) ? 0 : 1;
