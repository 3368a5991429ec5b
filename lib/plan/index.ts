/**
 * Planning a sandbox: lib/plan/plan.ts decides (SandboxPlan), lib/plan/encode.ts encodes the
 * plan for the setup child (addon/plan.h), lib/plan/image.ts resolves what the plan needs of
 * the image and the store.
 */
export { DEFAULT_DISK_BYTES, DEFAULT_SHM_BYTES, LEGACY_LOWERDIRS_MAX, MASKED, READONLY, planSandbox, writableLayer, type MountAttr, type PlanMount, type PlanUpper, type SandboxPlan } from './plan.js';
export { encodePlan, type PlanResources } from './encode.js';
export { imageUser, prepareImageUser, resolveCached, rootMountpoint, sandboxEnv } from './image.js';
