/**
 * The models the method tables compare on: the tinystories-656k fixture and its
 * outlier-injected variant (s = 50 on 2 % of channels, cached under fixtures/generated/).
 * @module
 */
import { outlierModel } from "../fixtures/outliers.ts";
import { fixtureModel, PROJECT_ROOT } from "../fixtures/paths.ts";

/** [label, path] of the fixture and its outlier-injected variant. */
export async function fixtureAndOutliers(): Promise<[string, string][]> {
  return [
    ["tinystories-656k", fixtureModel("tinystories-656k")],
    [
      "tinystories-656k + outliers",
      await outlierModel(
        fixtureModel("tinystories-656k"),
        `${PROJECT_ROOT}/fixtures/generated/tinystories-656k-outliers-s50`,
        { scale: 50, fraction: 0.02, seed: 0 },
      ),
    ],
  ];
}
