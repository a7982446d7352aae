// The server's character offsets count code points (Python string indexes); JavaScript
// strings count UTF-16 units, where an emoji takes two. utf16Offsets(text)[i] is where
// code point i starts in the JavaScript string (the last entry is text.length).
"use strict";

function utf16Offsets(text) {
  const out = [0];
  let at = 0;
  for (const ch of text) {  // iterates code points, not UTF-16 units
    at += ch.length;
    out.push(at);
  }
  return out;
}

if (typeof module !== "undefined") module.exports = { utf16Offsets };
