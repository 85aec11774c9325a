// MVCustom: an "upload camera file" button on the Load Trajectory node.
//
// ComfyUI's frontend only has upload widgets for images, video and audio, so pose files (.txt, .json,
// .jgz) are sent here to the same /upload/image route, which stores any file in the input folder, and
// the uploaded name is selected in the node's "file" combo. The button is appended after the schema's
// widgets and is not serialized, so saved workflows keep their positional widget values.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_ID = "MVC_LoadTrajectory";
const ACCEPT = ".txt,.json,.jgz,.gz";

async function uploadToInput(file) {
  const body = new FormData();
  body.append("image", file);
  body.append("type", "input");
  const resp = await api.fetchApi("/upload/image", { method: "POST", body });
  if (resp.status !== 200) {
    throw new Error(`${resp.status} ${resp.statusText}`);
  }
  const data = await resp.json();
  return data.subfolder ? `${data.subfolder}/${data.name}` : data.name;
}

app.registerExtension({
  name: "MVCustom.LoadTrajectoryUpload",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_ID) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const fileWidget = this.widgets?.find((w) => w.name === "file");
      const chooser = document.createElement("input");
      chooser.type = "file";
      chooser.accept = ACCEPT;
      chooser.style.display = "none";
      document.body.append(chooser);
      chooser.onchange = async () => {
        const file = chooser.files?.[0];
        chooser.value = "";
        if (!file || !fileWidget) return;
        try {
          const name = await uploadToInput(file);
          const values = fileWidget.options.values;
          if (Array.isArray(values) && !values.includes(name)) values.push(name);
          fileWidget.value = name;
          fileWidget.callback?.(name);
          this.setDirtyCanvas?.(true, true);
        } catch (err) {
          alert(`MVCustom Load Trajectory: upload of ${file.name} failed (${err.message})`);
        }
      };
      const button = this.addWidget("button", "upload camera file", null, () => chooser.click());
      button.serialize = false;
      const onRemoved = this.onRemoved;
      this.onRemoved = function () {
        chooser.remove();
        return onRemoved?.apply(this, arguments);
      };
      return result;
    };
  },
});
