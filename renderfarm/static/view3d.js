// The room in 3D: three.js built from the same scene JSON Blender renders (renderfarm/blender_scene.py builds it
// there; the conventions are in renderfarm/scene.py). Orbit by default; a walk mode at eye height.
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import { PointerLockControls } from 'three/addons/controls/PointerLockControls.js';

// The one conversion between Blender's frame (metres, Z up) and three.js's (Y up): a rotation of -90 degrees
// about X, (x, y, z) -> (x, z, -y). The room is built in Blender's coordinates inside a group that carries this
// matrix; the camera lives in three.js's frame and goes through toThree / toBlender, made from the same matrix.
export const BLENDER_TO_THREE = new THREE.Matrix4().makeRotationX(-Math.PI / 2);
const THREE_TO_BLENDER = BLENDER_TO_THREE.clone().invert();

export function toThree([x, y, z]) {
  return new THREE.Vector3(x, y, z).applyMatrix4(BLENDER_TO_THREE);
}

export function toBlender(v) {
  const b = v.clone().applyMatrix4(THREE_TO_BLENDER);
  return [b.x, b.y, b.z];
}

// As renderfarm/blender_scene.py builds them.
const SENSOR_WIDTH = 36; // mm; Blender fits it to the image's width (sensor_fit HORIZONTAL)
const WALL_THICKNESS = 0.1;
const FLOOR_THICKNESS = 0.1;
const CLIP_START = 0.05;
const CLIP_END = 2000;
// Blender's XYZ Euler (X applied first, then Y, then Z: R = Rz Ry Rx) is three.js's order 'ZYX'.
const BLENDER_EULER_ORDER = 'ZYX';

// Walking: eye height and pace of a person; the eye keeps this far from the floor's edges, where the walls stand.
export const EYE_HEIGHT = 1.6;
const WALK_SPEED = 1.4; // m/s
const TURN_SPEED = 1.5; // rad/s with the arrow keys
const WALL_MARGIN = 0.3; // m
const MAX_PITCH = Math.PI / 2 - 0.05;
const EXPOSURE = 0.8;

function colour(hex) {
  return new THREE.Color(hex); // "#rrggbb" is sRGB; three.js converts it to its linear working space
}

// Unit extents, like Blender's primitives before the mesh is scaled to `size` (a cylinder stands along Z). One
// geometry per kind, shared by every object of that kind (and kept for the page's life).
const GEOMETRIES = {
  box: () => new THREE.BoxGeometry(1, 1, 1),
  sphere: () => new THREE.SphereGeometry(0.5, 48, 24),
  cylinder: () => new THREE.CylinderGeometry(0.5, 0.5, 1, 48).rotateX(Math.PI / 2),
};
const shared = new Map();

function geometryFor(kind) {
  if (!(kind in GEOMETRIES)) throw new Error(`unknown object kind: ${kind}`);
  if (!shared.has(kind)) shared.set(kind, GEOMETRIES[kind]());
  return shared.get(kind);
}

// One material per distinct look in a scene (its objects share them).
function materials() {
  const made = new Map();
  return (spec) => {
    const key = [spec.colour, spec.roughness ?? 0.5, spec.metallic ?? 0, spec.emission ?? 0].join('|');
    if (!made.has(key)) {
      const c = colour(spec.colour);
      made.set(key, new THREE.MeshStandardMaterial({
        color: c,
        roughness: spec.roughness ?? 0.5,
        metalness: spec.metallic ?? 0,
        emissive: spec.emission ? c : new THREE.Color(0, 0, 0),
        emissiveIntensity: spec.emission ?? 0,
      }));
    }
    return made.get(key);
  };
}

function placed(kind, size, position, rotation, mat, name) {
  const mesh = new THREE.Mesh(geometryFor(kind), mat);
  mesh.name = name;
  mesh.scale.set(size[0], size[1], size[2]);
  mesh.position.set(position[0], position[1], position[2]);
  const [rx, ry, rz] = (rotation ?? [0, 0, 0]).map(THREE.MathUtils.degToRad);
  mesh.rotation.set(rx, ry, rz, BLENDER_EULER_ORDER);
  return mesh;
}

function roomMeshes(room) {
  const floor = new THREE.MeshStandardMaterial({ color: colour(room.floor_colour), roughness: 0.6 });
  const wall = new THREE.MeshStandardMaterial({ color: colour(room.wall_colour), roughness: 0.9 });
  const w = room.width, d = room.depth, h = room.wall_height, t = WALL_THICKNESS;
  const out = [placed('box', [w, d, FLOOR_THICKNESS], [0, 0, -FLOOR_THICKNESS / 2], null, floor, 'floor')];
  const walls = {
    back: [[w + 2 * t, t, h], [0, d / 2 + t / 2, h / 2]],
    front: [[w + 2 * t, t, h], [0, -d / 2 - t / 2, h / 2]],
    left: [[t, d + 2 * t, h], [-w / 2 - t / 2, 0, h / 2]],
    right: [[t, d + 2 * t, h], [w / 2 + t / 2, 0, h / 2]],
  };
  for (const name of room.walls ?? ['back', 'left']) {
    const [size, position] = walls[name];
    out.push(placed('box', size, position, null, wall, `wall_${name}`));
  }
  return out;
}

function aimed(light, position, target) {
  // Lights are made in the Blender group, so their target is an object there too.
  light.position.set(...position);
  light.target.position.set(...target);
  return [light, light.target];
}

// Blender's light units to three.js's physical ones, radiometrically: a point light of P watts has an intensity
// of P / 4pi per steradian, a sun of S W/m^2 gives an irradiance of S, a one-sided area light of P watts shines
// P / pi per steradian straight ahead, fading as the cosine towards its sides (a spot light with a full
// penumbra over 90 degrees stands in for it). What Cycles adds (bounced light, soft shadows) the view does not
// try to match: EXPOSURE makes up for the bounced light on average.
function lightFrom(spec) {
  const c = colour(spec.colour ?? '#ffffff');
  const target = spec.target ?? [0, 0, 0];
  if (spec.kind === 'point') {
    const light = new THREE.PointLight(c, spec.energy / (4 * Math.PI), 0, 2);
    light.position.set(...spec.position);
    return [light];
  }
  if (spec.kind === 'sun') return aimed(new THREE.DirectionalLight(c, spec.energy), spec.position, target);
  if (spec.kind === 'area') {
    const spot = new THREE.SpotLight(c, spec.energy / Math.PI, 0, Math.PI / 2 - 0.01, 1, 2);
    return aimed(spot, spec.position, target);
  }
  throw new Error(`unknown light kind: ${spec.kind}`);
}

function dispose(object) {
  object.traverse((o) => {
    if (o.material) o.material.dispose(); // the geometries are shared: kept
  });
}

export class RoomView {
  // canvas: the <canvas> to draw in; onEye(position): called with the eye's Blender coordinates after each frame.
  constructor(canvas, { onEye = () => {}, onFrame = () => {} } = {}) {
    this.canvas = canvas;
    this.onEye = onEye;
    this.onFrame = onFrame;
    this.frames = 0;
    this.renderer = new THREE.WebGLRenderer({ canvas, antialias: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    // Blender renders through Filmic; of three.js's tone mappings ACES keeps saturated colours most alike, and at
    // this exposure the furnished room's mean colour comes within 2 % of Cycles' preview.
    this.renderer.toneMapping = THREE.ACESFilmicToneMapping;
    this.renderer.toneMappingExposure = EXPOSURE;
    this.renderer.outputColorSpace = THREE.SRGBColorSpace;
    this.scene = new THREE.Scene();
    this.camera = new THREE.PerspectiveCamera(50, 16 / 9, CLIP_START, CLIP_END);
    this.root = new THREE.Group(); // Blender's frame
    this.root.matrixAutoUpdate = false;
    this.root.matrix.copy(BLENDER_TO_THREE);
    this.scene.add(this.root);
    this.spec = null;
    this.lens = 35;
    this.mode = 'orbit';
    this.keys = new Set();
    this.dirty = true;
    this.last = performance.now();

    this.orbit = new OrbitControls(this.camera, canvas);
    this.orbit.listenToKeyEvents(canvas); // arrows pan, Shift+arrows turn
    this.orbit.addEventListener('change', () => this.requestFrame());
    this.walker = new PointerLockControls(this.camera, canvas);
    this.walker.addEventListener('change', () => this.requestFrame());
    canvas.addEventListener('click', () => this.lockPointer());
    canvas.addEventListener('keydown', (e) => this.keyDown(e));
    canvas.addEventListener('keyup', (e) => this.keys.delete(e.code));
    canvas.addEventListener('blur', () => this.keys.clear());
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
    this.loop = this.loop.bind(this);
    requestAnimationFrame(this.loop);
  }

  // -- the scene ------------------------------------------------------------------------------------------
  setScene(spec) {
    const root = new THREE.Group();
    for (const mesh of roomMeshes(spec.room)) root.add(mesh);
    const material = materials();
    (spec.objects ?? []).forEach((o, i) => {
      const name = o.name ?? `${o.kind}_${i}`;
      root.add(placed(o.kind, o.size, o.position, o.rotation, material(o), name));
    });
    for (const l of spec.lights ?? []) root.add(...lightFrom(l));
    const world = spec.world ?? { colour: '#20242c', strength: 0.3 };
    // A uniform world of radiance C*s lights a white surface to C*s; three.js's ambient light is irradiance/pi.
    root.add(new THREE.AmbientLight(colour(world.colour), world.strength * Math.PI));
    this.scene.background = colour(world.colour).multiplyScalar(world.strength);
    for (const old of [...this.root.children]) {
      this.root.remove(old);
      dispose(old);
    }
    this.root.add(...root.children);
    const sameCamera = this.spec && JSON.stringify(this.spec.camera) === JSON.stringify(spec.camera);
    this.spec = spec;
    if (!sameCamera) this.resetView(); // an edit of the room or its objects keeps the view
    this.draw(); // now, not at the next animation frame: the room shows as soon as it is built
  }

  // The scene's camera is now `camera` (the view's own, from viewCamera): the view stays where it is.
  adoptCamera(camera) {
    this.spec = { ...this.spec, camera };
  }

  // Back to the scene's own camera.
  resetView() {
    if (!this.spec) return;
    const cam = this.spec.camera;
    this.lens = cam.lens ?? 35;
    this.camera.position.copy(toThree(cam.position));
    this.camera.up.set(0, 1, 0); // Blender's Z: its camera keeps its Y axis towards Z (to_track_quat('-Z', 'Y'))
    this.orbit.target.copy(toThree(cam.target));
    this.camera.lookAt(this.orbit.target);
    if (this.mode === 'walk') this.enterWalk();
    else this.orbit.update();
    this.updateLens();
    this.requestFrame();
  }

  // The camera the view is looking through, as the scene's `camera` (Blender's frame, millimetres rounded).
  viewCamera() {
    const position = this.camera.position.clone();
    const target =
      this.mode === 'orbit' && this.orbit.target.distanceTo(position) > 1e-3
        ? this.orbit.target.clone()
        : position.clone().add(this.camera.getWorldDirection(new THREE.Vector3()).multiplyScalar(2));
    const mm = (v) => toBlender(v).map((x) => Math.round(x * 1000) / 1000);
    return { position: mm(position), target: mm(target), lens: this.lens };
  }

  focusOn(name) {
    const mesh = this.root.getObjectByName(name);
    if (!mesh || this.mode !== 'orbit') return;
    this.orbit.target.copy(mesh.getWorldPosition(new THREE.Vector3()));
    this.orbit.update();
  }

  // -- orbit and walk -------------------------------------------------------------------------------------
  setMode(mode) {
    if (mode === this.mode) return;
    this.mode = mode;
    if (mode === 'walk') {
      this.enterWalk();
    } else {
      this.walker.unlock();
      this.orbit.enabled = true;
      this.orbit.target.copy(this.camera.position).add(this.camera.getWorldDirection(new THREE.Vector3()).multiplyScalar(2));
      this.orbit.update();
    }
    this.requestFrame();
  }

  enterWalk() {
    this.orbit.enabled = false;
    const [x, y] = toBlender(this.camera.position);
    this.camera.position.copy(toThree(this.clampToRoom([x, y, EYE_HEIGHT])));
    // Keep the heading, look level.
    const euler = new THREE.Euler().setFromQuaternion(this.camera.quaternion, 'YXZ');
    euler.x = 0;
    euler.z = 0;
    this.camera.quaternion.setFromEuler(euler);
  }

  lockPointer() {
    if (this.mode !== 'walk') return;
    this.canvas.focus();
    try {
      const pending = this.walker.lock();
      if (pending && pending.catch) pending.catch(() => {}); // refused (automation, an iframe): keys still work
    } catch {
      // pointer lock is not available here: the arrow keys turn instead
    }
  }

  keyDown(e) {
    if (this.mode !== 'walk') return;
    if (e.code === 'Escape') return;
    if (['KeyW', 'KeyA', 'KeyS', 'KeyD', 'ArrowUp', 'ArrowDown', 'ArrowLeft', 'ArrowRight'].includes(e.code)) {
      this.keys.add(e.code);
      e.preventDefault();
      this.requestFrame();
    }
  }

  // The eye stays on the floor, WALL_MARGIN inside its edges: the walls stand there, and past an open side
  // there is nothing to stand on.
  clampToRoom([x, y, z]) {
    const room = this.spec.room;
    const hx = Math.max(room.width / 2 - WALL_MARGIN, 0);
    const hy = Math.max(room.depth / 2 - WALL_MARGIN, 0);
    return [Math.min(Math.max(x, -hx), hx), Math.min(Math.max(y, -hy), hy), z];
  }

  walk(dt) {
    const k = this.keys;
    const turn = (k.has('ArrowLeft') ? 1 : 0) - (k.has('ArrowRight') ? 1 : 0);
    const pitch = (k.has('ArrowUp') ? 1 : 0) - (k.has('ArrowDown') ? 1 : 0);
    if (turn || pitch) {
      const euler = new THREE.Euler().setFromQuaternion(this.camera.quaternion, 'YXZ');
      euler.y += turn * TURN_SPEED * dt;
      euler.x = Math.max(-MAX_PITCH, Math.min(MAX_PITCH, euler.x + pitch * TURN_SPEED * dt));
      this.camera.quaternion.setFromEuler(euler);
    }
    const ahead = (k.has('KeyW') ? 1 : 0) - (k.has('KeyS') ? 1 : 0);
    const side = (k.has('KeyD') ? 1 : 0) - (k.has('KeyA') ? 1 : 0);
    if (ahead || side) {
      const forward = this.camera.getWorldDirection(new THREE.Vector3());
      forward.y = 0; // walk on the floor, wherever the eye looks
      if (forward.lengthSq() < 1e-9) forward.set(0, 0, -1).applyQuaternion(this.camera.quaternion).setY(0);
      forward.normalize();
      const right = new THREE.Vector3().crossVectors(forward, this.camera.up).normalize();
      const step = forward.multiplyScalar(ahead).add(right.multiplyScalar(side)).normalize().multiplyScalar(WALK_SPEED * dt);
      const [x, y] = toBlender(this.camera.position.clone().add(step));
      this.camera.position.copy(toThree(this.clampToRoom([x, y, EYE_HEIGHT])));
    }
    return Boolean(turn || pitch || ahead || side);
  }

  // -- drawing --------------------------------------------------------------------------------------------
  updateLens() {
    // Blender fits the 36 mm sensor to the width: the horizontal field of view is fixed, the vertical follows.
    const aspect = this.camera.aspect;
    const halfWidth = SENSOR_WIDTH / 2 / this.lens;
    this.camera.fov = THREE.MathUtils.radToDeg(2 * Math.atan(halfWidth / aspect));
    this.camera.updateProjectionMatrix();
  }

  // Fit the drawing buffer and the camera to the canvas's size on screen; true when they changed.
  fit() {
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    const size = this.renderer.getSize(new THREE.Vector2());
    if (!w || !h || (size.x === w && size.y === h)) return false;
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.updateLens();
    return true;
  }

  resize() {
    if (this.fit()) this.requestFrame();
  }

  requestFrame() {
    this.dirty = true;
  }

  draw() {
    this.fit(); // the canvas may have just been shown (the resize observer tells only later)
    this.dirty = false;
    this.renderer.render(this.scene, this.camera);
    this.frames += 1;
    // User Timing: when the room was first drawn (what bench/page.py measures from navigation start).
    if (this.frames === 1) performance.mark('renderfarm:first-frame');
    this.canvas.dataset.frames = String(this.frames);
    this.onEye(toBlender(this.camera.position));
    this.onFrame(this.frames);
  }

  loop(now) {
    const dt = Math.min((now - this.last) / 1000, 0.25);
    this.last = now;
    if (this.mode === 'walk' && this.spec && this.walk(dt)) this.dirty = true;
    if (this.dirty && this.spec) this.draw();
    requestAnimationFrame(this.loop);
  }
}
