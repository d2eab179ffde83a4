// Validate a .glb/.gltf file with the Khronos glTF validator; print its JSON report on stdout.
// usage: node validate_gltf.mjs FILE
import { readFile } from "node:fs/promises";
import validator from "gltf-validator";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate_gltf.mjs FILE");
  process.exit(2);
}
const bytes = new Uint8Array(await readFile(file));
const report = await validator.validateBytes(bytes, { uri: file, maxIssues: 100 });
console.log(JSON.stringify(report));
