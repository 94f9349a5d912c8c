// One colour per socket type, close to the ones ComfyUI users know.

const COLORS = {
  MODEL: "#b39ddb",
  CLIP: "#ffd54f",
  VAE: "#ff6e6e",
  CONDITIONING: "#ffa94d",
  LATENT: "#ff9cf9",
  IMAGE: "#64b5f6",
  SAMPLER: "#ecb4b4",
  SIGMAS: "#cdffcd",
};

export function socketColor(type) {
  if (COLORS[type]) return COLORS[type];
  let hash = 0; // a type we do not know (a plugin's) still gets a stable colour of its own
  for (const char of String(type)) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360} 65% 65%)`;
}

export const canConnect = (outputType, inputType) => outputType === inputType;
