// The Kalki extension: starts `kalkic lsp` over stdio for .kalki files. Highlighting comes
// from syntaxes/kalki.tmLanguage.json; everything else from the server
// (docs/tools/lsp.md).
"use strict";

const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const config = vscode.workspace.getConfiguration("kalki");
  const command = config.get("server.path", "kalkic");
  const args = ["lsp", ...config.get("server.extraArgs", [])];
  const server = { command, args };
  client = new LanguageClient(
    "kalki",
    "Kalki",
    { run: server, debug: server },
    { documentSelector: [{ scheme: "file", language: "kalki" }] }
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
